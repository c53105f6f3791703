"""Input validation helpers: collect every bad field, then raise one INVALID_ARGUMENT."""

from __future__ import annotations

import re

from callisto.services.common.errors import FieldViolation, InvalidArgument

RESOURCE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
RESOURCE_ID_RULE = (
    "must be 1-63 characters of lower-case letters, digits and '-', not starting with '-'"
)
MAX_MESSAGE_TEXT_BYTES = 64 * 1024
"""Longest text of a stored message (persistence refuses more; a run cuts its turns to it)."""


class Violations:
    """Accumulates field violations so a client learns about all of them at once."""

    def __init__(self) -> None:
        self._items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._items.append(FieldViolation(field, description))

    def check(self, ok: bool, field: str, description: str) -> None:
        if not ok:
            self.add(field, description)

    def require(self, value: object, field: str) -> None:
        if not value:
            self.add(field, "is required")

    def __bool__(self) -> bool:
        return bool(self._items)

    def raise_if_any(self) -> None:
        if self._items:
            raise InvalidArgument(self._items)


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """The id of `<collection>/<id>`; INVALID_ARGUMENT when the name is malformed."""
    prefix = collection + "/"
    if not name.startswith(prefix):
        raise InvalidArgument.field(field, f"must look like {collection}/{{id}}")
    resource_id = name[len(prefix) :]
    if not RESOURCE_ID.match(resource_id):
        raise InvalidArgument.field(field, f"id {RESOURCE_ID_RULE}")
    return resource_id


def check_resource_id(violations: Violations, resource_id: str, field: str) -> None:
    if resource_id and not RESOURCE_ID.match(resource_id):
        violations.add(field, RESOURCE_ID_RULE)


def check_page_size(
    violations: Violations, page_size: int, *, default: int, maximum: int = 1000
) -> int:
    if page_size < 0:
        violations.add("page_size", "must not be negative")
    elif page_size > maximum:
        violations.add("page_size", f"must be at most {maximum}")
    return page_size or default
