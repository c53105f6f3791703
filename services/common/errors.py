"""Typed errors, raised once in handlers and mapped to a gRPC status in one interceptor.

Each error carries its `google.rpc` details (BadRequest field violations, RetryInfo, ErrorInfo)
so clients, and HTTP clients behind Envoy's `convert_grpc_status`, see why a call failed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

ERROR_DOMAIN = "callisto.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: its path in the request (`conversation.title`) and what is wrong."""

    field: str
    description: str


class CallistoError(Exception):
    """Base of every error a handler raises on purpose.

    `violations` name the request fields at fault (sent as a `google.rpc.BadRequest`), whatever
    the code: a bad value is INVALID_ARGUMENT, an oversized one RESOURCE_EXHAUSTED.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})
        self.violations = list(violations)

    def details(self) -> list[Message]:
        details: list[Message] = []
        if self.violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in self.violations
                    ]
                )
            )
        if self.reason:
            details.append(
                error_details_pb2.ErrorInfo(
                    reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
                )
            )
        return details

    def to_status(self) -> status_pb2.Status:
        return build_status(self.code, self.message, self.details())


class InvalidArgument(CallistoError):
    """The request is malformed; lists every offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], message: str = "") -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(
            message or f"invalid request: {summary}",
            reason="INVALID_ARGUMENT",
            violations=violations,
        )

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class MalformedRequest(InvalidArgument):
    """A request message whose bytes are not a valid encoding of its type."""


class Unauthenticated(CallistoError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(CallistoError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(CallistoError):
    """The resource does not exist for this tenant (also what another tenant's resource is)."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CallistoError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(CallistoError):
    """A concurrency conflict, e.g. a stale etag: re-read and retry."""

    code = grpc.StatusCode.ABORTED


@dataclass(frozen=True)
class PreconditionViolation:
    """One unmet precondition (`google.rpc.PreconditionFailure`): its kind, say `STATUS`, the
    resource it concerns and how to satisfy it."""

    type: str
    subject: str
    description: str


class FailedPrecondition(CallistoError):
    """The system is not in the state the call needs; `preconditions` say which."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        metadata: dict[str, str] | None = None,
        preconditions: Sequence[PreconditionViolation] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.preconditions = list(preconditions)

    def details(self) -> list[Message]:
        details = super().details()
        if self.preconditions:
            failure = error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=p.type, subject=p.subject, description=p.description
                    )
                    for p in self.preconditions
                ]
            )
            details.insert(0, failure)
        return details


class ResourceExhausted(CallistoError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(CallistoError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(CallistoError):
    code = grpc.StatusCode.CANCELLED


class Internal(CallistoError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(CallistoError):
    """A dependency is down; `retry_after` (seconds) tells clients when to try again."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float = 1.0, reason: str = "") -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(self.retry_after * 1000))
        return [error_details_pb2.RetryInfo(retry_delay=delay), *super().details()]


def build_status(
    code: grpc.StatusCode, message: str, details: Iterable[Message] = ()
) -> status_pb2.Status:
    """A `google.rpc.Status` for a gRPC code, for terminal stream messages and trailers."""
    packed = []
    for detail in details:
        holder = any_pb2.Any()
        holder.Pack(detail)
        packed.append(holder)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


def as_callisto_error(error: BaseException) -> CallistoError | None:
    """The typed error an exception stands for: a dependency that cannot be reached (a refused
    or dropped connection, a timeout) is UNAVAILABLE, so clients know to retry."""
    if isinstance(error, CallistoError):
        return error
    if isinstance(error, (ConnectionError, TimeoutError, RedisConnectionError, RedisTimeoutError)):
        return Unavailable("a backing service is unreachable; retry shortly", retry_after=1.0)
    return None


def status_from_exception(error: BaseException) -> status_pb2.Status:
    """The status an exception surfaces as; unknown exceptions never leak their text."""
    typed = as_callisto_error(error)
    if typed is not None:
        return typed.to_status()
    return build_status(grpc.StatusCode.INTERNAL, "internal error")


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def grpc_code(status: status_pb2.Status | int) -> grpc.StatusCode:
    """The gRPC code of a `google.rpc.Status` (or of its numeric code); UNKNOWN if unheard of."""
    number = status if isinstance(status, int) else status.code
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


__all__ = [
    "ERROR_DOMAIN",
    "Aborted",
    "AlreadyExists",
    "CallistoError",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "as_callisto_error",
    "build_status",
    "grpc_code",
    "status_from_exception",
]
