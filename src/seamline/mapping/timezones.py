"""Time-zone conversion and date parsing for mappings: ``$toTimezone`` and ``$parseDateTime``.

Both functions speak ISO-8601 strings, because that is what JSON payloads
carry, and use the IANA time-zone database through :mod:`zoneinfo`, so
daylight-saving transitions are handled correctly.

Naive local times
-----------------
A timestamp without an offset (``2024-03-31T02:30:00``) is a *wall-clock time
in the target zone*. Around a daylight-saving change such a time can be

* **ambiguous** -- it happens twice (autumn: 02:30 in Berlin on the last
  Sunday of October), or
* **nonexistent** -- it never happens (spring: clocks jump from 02:00 to 03:00).

The ``policy`` argument decides, with the same names and meaning as the
TC39 Temporal proposal's ``disambiguation`` option:

=============== ========================================= =====================================
policy          ambiguous (happens twice)                 nonexistent (skipped)
=============== ========================================= =====================================
``compatible``  the earlier instant (summer-time offset)   shifted forward by the gap (02:30 → 03:30)
(default)
``earlier``     the earlier instant                        shifted backward by the gap (02:30 → 01:30)
``later``       the later instant (standard-time offset)   shifted forward by the gap (02:30 → 03:30)
``reject``      fail with ``mapping.tz_ambiguous``         fail with ``mapping.tz_nonexistent``
=============== ========================================= =====================================
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from seamline.mapping.errors import MappingError

__all__ = ["POLICIES", "parse_datetime", "to_timezone", "to_timezone_in"]

POLICIES = ("compatible", "earlier", "later", "reject")


@functools.lru_cache(maxsize=512)
def zone(name: str) -> tzinfo:
    """The IANA zone ``name`` (``Europe/Berlin``); ``UTC`` and ``Z`` are accepted too."""
    if name in ("UTC", "Z", "utc"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingError(
            f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin')",
            jsonata_code="timezone",
            details={"zone": name},
        ) from exc


def _timespec(text: str) -> str:
    """Keep the input's precision: seconds, milliseconds or microseconds."""
    dot = text.find(".", 10)
    if dot < 0:
        dot = text.find(",", 10)
    if dot < 0:
        return "seconds"
    digits = 0
    for ch in text[dot + 1 :]:
        if not ch.isdigit():
            break
        digits += 1
    return "milliseconds" if digits <= 3 else "microseconds"


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise MappingError(
            f"unknown time policy {policy!r}; use one of {', '.join(POLICIES)}",
            jsonata_code="timezone",
            details={"policy": policy},
        )


def localize(naive: datetime, tz: tzinfo, policy: str = "compatible") -> datetime:
    """Attach ``tz`` to the wall-clock time ``naive``, resolving DST gaps and folds by ``policy``."""
    _check_policy(policy)
    first = naive.replace(tzinfo=tz, fold=0)
    second = naive.replace(tzinfo=tz, fold=1)
    off_first, off_second = first.utcoffset(), second.utcoffset()
    if off_first == off_second:
        return first
    # Round-trip through UTC tells a fold (both readings exist) from a gap (neither does).
    back = first.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    if back == naive:  # ambiguous: the wall time happens twice
        if policy == "reject":
            raise MappingError(
                f"local time {naive.isoformat()} is ambiguous in {tz} (it happens twice)",
                jsonata_code="tz_ambiguous",
                details={"time": naive.isoformat()},
            )
        return second if policy == "later" else first
    # nonexistent: the wall time falls into a gap
    if policy == "reject":
        raise MappingError(
            f"local time {naive.isoformat()} does not exist in {tz} (clocks skip it)",
            jsonata_code="tz_nonexistent",
            details={"time": naive.isoformat()},
        )
    assert off_first is not None and off_second is not None
    gap = abs(off_first - off_second)
    if policy == "earlier":
        return (naive - gap).replace(tzinfo=tz, fold=0)
    return (naive + gap).replace(tzinfo=tz, fold=0)


def _parse_iso(value: Any) -> tuple[datetime, str]:
    if isinstance(value, bool):
        raise MappingError(
            "$toTimezone expects an ISO-8601 string or epoch milliseconds",
            jsonata_code="timezone",
            details={"value": value},
        )
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value / 1000.0, UTC), "milliseconds"
    if not isinstance(value, str):
        raise MappingError(
            "$toTimezone expects an ISO-8601 string or epoch milliseconds",
            jsonata_code="timezone",
            details={"value": value},
        )
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise MappingError(
            f"not an ISO-8601 timestamp: {value!r}", jsonata_code="timezone", details={"value": value}
        ) from exc
    return parsed, _timespec(value)


def to_timezone(timestamp: Any, zone_name: Any, policy: Any = "compatible") -> str | None:
    """``$toTimezone(timestamp, zone[, policy])``: the same instant, written in ``zone``.

    ``timestamp`` is an ISO-8601 string (or epoch milliseconds). With an
    offset (``Z``, ``+02:00``) it is converted to ``zone``; without one it is
    read as a wall-clock time in ``zone`` (see the module docs for ``policy``).
    The result is ISO-8601 with the zone's offset, at the input's precision.
    ``null`` in gives ``null`` out.
    """
    if timestamp is None:
        return None
    if not isinstance(zone_name, str):
        raise MappingError("$toTimezone: the zone must be a string such as 'Europe/Berlin'", jsonata_code="timezone")
    tz = zone(zone_name)
    parsed, spec = _parse_iso(timestamp)
    if parsed.tzinfo is None:
        result = localize(parsed, tz, policy if policy is not None else "compatible")
    else:
        result = parsed.astimezone(tz)
    return result.isoformat(timespec=spec)


_fromisoformat = datetime.fromisoformat


def to_timezone_in(zone_name: str, policy: Any = "compatible") -> Callable[[Any], str | None]:
    """``to_timezone(timestamp, zone_name, policy)`` as a function of ``timestamp`` (the zone resolved once).

    Raises:
        MappingError: ``zone_name`` is not a known zone.
    """
    tz = zone(zone_name)
    if policy is None:
        policy = "compatible"

    def convert(timestamp: Any) -> str | None:
        # the body of to_timezone, with the checks of the constant arguments done above
        # and _parse_iso inlined for a text timestamp
        if timestamp.__class__ is str:
            try:
                parsed = _fromisoformat(timestamp)
            except ValueError:
                parsed, spec = _parse_iso(timestamp)  # raises the error
            else:
                spec = _timespec(timestamp)
        elif timestamp is None:
            return None
        else:
            parsed, spec = _parse_iso(timestamp)
        result = localize(parsed, tz, policy) if parsed.tzinfo is None else parsed.astimezone(tz)
        return result.isoformat(timespec=spec)

    return convert


def parse_datetime(text: Any, fmt: Any, zone_name: Any = None, policy: Any = "compatible") -> str | None:
    """``$parseDateTime(text, format[, zone])``: parse with a strptime-style format to ISO-8601.

    ``format`` uses Python/C ``strptime`` directives (``%d.%m.%Y %H:%M``;
    ``%z`` reads an offset). A parsed time without an offset is a wall-clock
    time in ``zone`` (default ``UTC``), resolved like ``$toTimezone``'s
    default ``compatible`` policy. The result is ISO-8601 with offset;
    ``null`` in gives ``null`` out.
    """
    if text is None:
        return None
    if not isinstance(text, str) or not isinstance(fmt, str):
        raise MappingError(
            "$parseDateTime expects a string and a strptime format string",
            jsonata_code="datetime_parse",
            details={"value": text},
        )
    try:
        parsed = datetime.strptime(text, fmt)
    except ValueError as exc:
        raise MappingError(
            f"{text!r} does not match the format {fmt!r}",
            jsonata_code="datetime_parse",
            details={"value": text, "format": fmt},
        ) from exc
    spec = "microseconds" if parsed.microsecond else "seconds"
    if parsed.tzinfo is None:
        tz = zone(zone_name) if zone_name is not None else UTC
        parsed = localize(parsed, tz, policy if policy is not None else "compatible")
    elif zone_name is not None:
        parsed = parsed.astimezone(zone(zone_name))
    return parsed.isoformat(timespec=spec)
