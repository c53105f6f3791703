"""Typed errors raised by the retrieval backends, in the one hierarchy of `services.common.errors`.

Each is a :class:`CallistoError` that names the ``field`` it concerns and a human-readable
``description``, and carries its own gRPC status: bad input is INVALID_ARGUMENT with a
``BadRequest`` field violation, an oversized or overly costly document RESOURCE_EXHAUSTED, a
failing Milvus or Triton UNAVAILABLE with ``RetryInfo``. Backends name fields as they know them
(``content``, ``mime_type``); handlers rename them to request paths with :meth:`renamed`.
They pickle by field and description, so they cross from parse worker processes intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Self

import grpc

from callisto.services.common.errors import CallistoError, FieldViolation, Unavailable

RETRY_AFTER_S = 2.0


class RetrievalError(CallistoError):
    """Base class: something about ``field`` is wrong, as ``description`` explains."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason_name: ClassVar[str] = "INVALID_ARGUMENT"
    # Whether the status carries a BadRequest violation on the field (bad or oversized input).
    names_field: ClassVar[bool] = True

    def __init__(self, field: str, description: str) -> None:
        CallistoError.__init__(
            self,
            self._message(field, description),
            reason=self.reason_name,
            violations=[FieldViolation(field, description)] if self.names_field else (),
        )
        self.field = field
        self.description = description

    @classmethod
    def _message(cls, field: str, description: str) -> str:
        return f"invalid request: {field}: {description}"

    def renamed(self, fields: Mapping[str, str]) -> Self:
        """The same error about the request field that ``fields`` maps this one's field to."""
        field = fields.get(self.field, self.field)
        return self if field == self.field else type(self)(field, self.description)

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.field, self.description)


class UnsupportedMimeType(RetrievalError):
    """The document's MIME type has no parser."""


class CorruptDocument(RetrievalError):
    """The bytes could not be parsed as the declared type."""


class InvalidFilter(RetrievalError):
    """A metadata filter names an unknown field, an unsupported operator or a mistyped value."""


class InvalidArgument(RetrievalError):
    """A request value (an id, a tenant, a size) is malformed or out of range."""


class DocumentTooLarge(RetrievalError):
    """The document, or what it inflates to, exceeds the configured size limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason_name = "DOCUMENT_TOO_LARGE"

    @classmethod
    def _message(cls, field: str, description: str) -> str:
        return f"{field}: {description}"


class DocumentTooComplex(DocumentTooLarge):
    """Parsing the document ran past the time or memory a parse may take, and was stopped."""

    reason_name = "DOCUMENT_TOO_COMPLEX"


class NotFound(RetrievalError):
    """The named document or entity does not exist for this tenant."""

    code = grpc.StatusCode.NOT_FOUND
    reason_name = ""
    names_field = False

    @classmethod
    def _message(cls, field: str, description: str) -> str:
        return description


class BackendUnavailable(RetrievalError, Unavailable):
    """Triton or Milvus failed or timed out; the caller may retry (after ``RetryInfo``)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason_name = "BACKEND_UNAVAILABLE"
    names_field = False

    def __init__(self, field: str, description: str) -> None:
        super().__init__(field, description)
        self.retry_after = RETRY_AFTER_S

    @classmethod
    def _message(cls, field: str, description: str) -> str:
        return description


__all__ = [
    "BackendUnavailable",
    "CorruptDocument",
    "DocumentTooComplex",
    "DocumentTooLarge",
    "InvalidArgument",
    "InvalidFilter",
    "NotFound",
    "RetrievalError",
    "UnsupportedMimeType",
]
