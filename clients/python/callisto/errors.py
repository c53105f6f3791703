"""The SDK's error hierarchy, decoded once from a call's `grpc-status-details-bin`.

Every SDK call raises a subclass of `CallistoError`, one per gRPC status code, so callers write

    try:
        await client.persistence.get_conversation("conversations/c1")
    except callisto.errors.NotFound:
        ...

Each error carries what the server's `google.rpc` details said: `field_violations` (from
`BadRequest`: `{field path: description}`), `reason`/`domain`/`metadata` (from `ErrorInfo`),
`retry_delay` in seconds (from `RetryInfo`; None when the server gave none) and
`precondition_violations` (from `PreconditionFailure`).

- `from_rpc_error(err)` turns a `grpc.aio.AioRpcError` (or a sync `grpc.RpcError`) into one.
- `from_status(status)` turns a `google.rpc.Status` — the terminal `error` variant of a stream
  message — into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class PreconditionViolation:
    """One failed precondition (`PreconditionFailure.Violation`)."""

    type: str
    subject: str
    description: str


class CallistoError(Exception):
    """A failed call: its status code, message and decoded details."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str = "",
        *,
        code: grpc.StatusCode | None = None,
        field_violations: dict[str, str] | None = None,
        reason: str = "",
        domain: str = "",
        metadata: dict[str, str] | None = None,
        retry_delay: float | None = None,
        precondition_violations: list[PreconditionViolation] | None = None,
        status: status_pb2.Status | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        super().__init__(f"{self.code.name}: {message}" if message else self.code.name)
        self.message = message
        self.field_violations = dict(field_violations or {})
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.retry_delay = retry_delay
        self.precondition_violations = list(precondition_violations or [])
        # The whole `google.rpc.Status`, for details this hierarchy does not decode.
        self.status = status or status_pb2.Status(code=self.code.value[0], message=message)

    @property
    def retryable(self) -> bool:
        """Whether trying again may succeed: the service is unavailable, or it said when."""
        return self.code == grpc.StatusCode.UNAVAILABLE or self.retry_delay is not None


class Cancelled(CallistoError):
    code = grpc.StatusCode.CANCELLED


class Unknown(CallistoError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(CallistoError):
    """The request is malformed; `field_violations` names every offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(CallistoError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(CallistoError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(CallistoError):
    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(CallistoError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(CallistoError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(CallistoError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(CallistoError):
    """A concurrency conflict (a stale etag): re-read, then try again."""

    code = grpc.StatusCode.ABORTED


class OutOfRange(CallistoError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(CallistoError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(CallistoError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(CallistoError):
    """The service or one of its dependencies is down; retry after `retry_delay`."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(CallistoError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(CallistoError):
    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[CallistoError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
}
_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` of a numeric code (UNKNOWN for numbers gRPC does not define)."""
    return _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)


def error_class(code: grpc.StatusCode) -> type[CallistoError]:
    """The subclass raised for `code`."""
    return _BY_CODE.get(code, Unknown)


def _unpack(detail: any_pb2.Any, fields: dict[str, object]) -> None:
    if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
        bad = error_details_pb2.BadRequest()
        detail.Unpack(bad)
        violations = fields.setdefault("field_violations", {})
        assert isinstance(violations, dict)
        for violation in bad.field_violations:
            violations[violation.field] = violation.description
    elif detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
        info = error_details_pb2.ErrorInfo()
        detail.Unpack(info)
        fields.update(reason=info.reason, domain=info.domain, metadata=dict(info.metadata))
    elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
        retry = error_details_pb2.RetryInfo()
        detail.Unpack(retry)
        fields["retry_delay"] = retry.retry_delay.ToMilliseconds() / 1000
    elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
        failure = error_details_pb2.PreconditionFailure()
        detail.Unpack(failure)
        fields["precondition_violations"] = [
            PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
        ]


def from_status(status: status_pb2.Status) -> CallistoError:
    """The typed error a `google.rpc.Status` (e.g. a stream's terminal `error`) stands for."""
    code = status_code(status.code)
    fields: dict[str, object] = {}
    for detail in status.details:
        _unpack(detail, fields)
    return error_class(code)(status.message, code=code, status=status, **fields)  # type: ignore[arg-type]


def from_rpc_error(error: grpc.RpcError) -> CallistoError:
    """The typed error a failed call stands for, details decoded from its trailers."""
    code: grpc.StatusCode = error.code()
    message: str = error.details() or ""
    trailers: Any = error.trailing_metadata() or ()
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            # The trailer is authoritative only when it agrees with the call's own code.
            if status.code == code.value[0]:
                return from_status(status)
    if code == grpc.StatusCode.INTERNAL and _TRANSPORT_RESET in message:
        # No server answered INTERNAL: the stream was reset in transit, as a gateway resets a
        # stream whose upstream died after the response began. That is a lost connection, and
        # a resumable stream or an idempotent call may be tried again.
        return Unavailable(f"the stream was reset in transit ({message})")
    return error_class(code)(message, code=code)


# How grpc-core words an HTTP/2 RST_STREAM from the peer (the status it maps it to is INTERNAL).
_TRANSPORT_RESET = "Received RST_STREAM"


__all__ = [
    "Aborted",
    "AlreadyExists",
    "CallistoError",
    "Cancelled",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Unknown",
    "error_class",
    "from_rpc_error",
    "from_status",
    "status_code",
]
