"""Typed errors raised by the retrieval backends.

Each carries the request ``field`` it concerns and a human-readable ``description`` so the gRPC
layer can map it once (to INVALID_ARGUMENT with a ``BadRequest`` field violation, or to
UNAVAILABLE / DEADLINE_EXCEEDED for backend failures) without parsing messages.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class: something about ``field`` is wrong, as ``description`` explains."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class UnsupportedMimeType(RetrievalError):
    """The document's MIME type has no parser."""


class CorruptDocument(RetrievalError):
    """The bytes could not be parsed as the declared type."""


class DocumentTooLarge(RetrievalError):
    """The document exceeds the configured size limit."""


class InvalidFilter(RetrievalError):
    """A metadata filter names an unknown field, an unsupported operator or a mistyped value."""


class InvalidArgument(RetrievalError):
    """A request value (an id, a tenant, a size) is malformed or out of range."""


class NotFound(RetrievalError):
    """The named document or entity does not exist for this tenant."""


class BackendUnavailable(RetrievalError):
    """Triton or Milvus failed or timed out; the caller may retry."""
