"""`current_time`: the date and time now in an IANA time zone (zoneinfo)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callisto.services.orchestration.tools.errors import ToolInputError
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult, ToolSpec

DEFAULT_ZONE = "UTC"

PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "timezone": {
            "type": "string",
            "description": (
                "IANA time zone name such as 'Europe/Amsterdam' or 'America/New_York'; "
                "UTC when omitted."
            ),
            "minLength": 1,
            "maxLength": 64,
            "pattern": r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$",
        }
    },
    "additionalProperties": False,
}


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ToolInputError(
            f"unknown time zone {name!r}; use an IANA name such as 'Europe/Amsterdam'"
        ) from None


async def current_time(arguments: dict[str, Any], _context: ToolContext) -> ToolResult:
    name = str(arguments.get("timezone", DEFAULT_ZONE))
    # The first lookup of a zone reads its file from disk: off the event loop.
    zone = await asyncio.to_thread(_zone, name)
    now = dt.datetime.now(zone)
    offset = now.strftime("%z")
    data = {
        "timezone": name,
        "iso": now.isoformat(timespec="seconds"),
        "date": now.date().isoformat(),
        "time": now.strftime("%H:%M"),
        "weekday": now.strftime("%A"),
        "utc_offset": f"{offset[:3]}:{offset[3:]}",
    }
    return ToolResult(data=data, summary=f"{data['weekday']} {data['iso']} ({name})")


SPEC = ToolSpec(
    name="current_time",
    description=(
        "Gives today's date, the current time and weekday in a time zone. Use it for questions "
        "about now, today, tomorrow, or how long until a date."
    ),
    parameters=PARAMETERS,
    handler=current_time,
    timeout_s=2.0,
)
