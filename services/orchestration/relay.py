"""Errors of the services a run calls, passed on to the caller with their own status."""

from __future__ import annotations

import grpc
from google.rpc import status_pb2

from callisto import errors as sdk
from callisto.services.common.errors import CallistoError, FieldViolation


class Relayed(CallistoError):
    """An error another service answered, surfaced as that service put it (a missing
    conversation is NOT_FOUND here too, not INTERNAL)."""

    def __init__(self, error: sdk.CallistoError) -> None:
        super().__init__(
            error.message,
            reason=error.reason,
            metadata=error.metadata,
            violations=[FieldViolation(f, d) for f, d in error.field_violations.items()],
        )
        self.code = error.code
        self._status = error.status

    def to_status(self) -> status_pb2.Status:
        return self._status


class Unimplemented(CallistoError):
    """What this release does not do yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


def relayed(error: sdk.CallistoError) -> Relayed:
    return Relayed(error)
