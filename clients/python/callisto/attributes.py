"""Typed metadata attributes: Python scalars ⇄ `callisto.common.v1.AttributeValue`.

One conversion for the SDK (which sends attributes) and the services (which read and return
them), so a bool never turns into an int on one side only.
"""

from __future__ import annotations

from callisto.api.common.v1 import common_pb2

# What an attribute holds on the Python side.
Scalar = str | int | float | bool


def to_proto(value: Scalar) -> common_pb2.AttributeValue:
    # bool first: it is a subclass of int.
    if isinstance(value, bool):
        return common_pb2.AttributeValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AttributeValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AttributeValue(double_value=value)
    return common_pb2.AttributeValue(string_value=str(value))


def from_proto(value: common_pb2.AttributeValue) -> Scalar | None:
    """The scalar an attribute holds, or None when none of its kinds is set."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    result: Scalar = getattr(value, kind)
    return result
