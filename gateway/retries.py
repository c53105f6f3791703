"""Which calls Envoy may replay on another replica, read from the contracts.

An RPC marked `option idempotency_level = NO_SIDE_EFFECTS` or `IDEMPOTENT` may run twice with
the effect of once, so Envoy replays it when its replica was unavailable, reset the stream or
timed out. Any other unary call is replayed only when it never reached a replica (the
connection failed, the stream was refused or reset before the request went out). Streams are
never replayed by Envoy: they end with UNAVAILABLE and the SDK resumes them from their last
event.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import MethodDescriptor

# Conditions under which nothing reached a replica: safe for every call.
NEVER_SENT_RETRY_ON = "connect-failure,refused-stream,reset-before-request"
# For idempotent calls, also what may have reached one: an UNAVAILABLE status, a CANCELLED one
# (a stopping replica cancels what it could not finish), a reset (the replica died mid-call, or
# the attempt timed out) and Envoy's own 502/503/504.
IDEMPOTENT_RETRY_ON = f"unavailable,cancelled,reset,gateway-error,{NEVER_SENT_RETRY_ON}"
# Replays of calls that never reached a replica.
NEVER_SENT_RETRIES = 2
# How many other replicas a replay may try before it accepts one it already used.
HOST_SELECTION_ATTEMPTS = 5

_IDEMPOTENT_LEVELS = frozenset(
    {descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS, descriptor_pb2.MethodOptions.IDEMPOTENT}
)


def is_idempotent(method: MethodDescriptor) -> bool:
    """Whether the contract says the RPC may be replayed (`idempotency_level`)."""
    return method.GetOptions().idempotency_level in _IDEMPOTENT_LEVELS


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


def retry_policy(
    *, idempotent: bool, retries: int, per_try_timeout_s: float | None = None
) -> dict[str, Any]:
    """A route's `retry_policy`: each replay goes to a replica not tried yet when one is left."""
    policy: dict[str, Any] = {
        "retry_on": IDEMPOTENT_RETRY_ON if idempotent else NEVER_SENT_RETRY_ON,
        "num_retries": retries if idempotent else NEVER_SENT_RETRIES,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": "type.googleapis.com/"
                    "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS,
    }
    if idempotent and per_try_timeout_s is not None:
        policy["per_try_timeout"] = _duration(per_try_timeout_s)
    return policy
