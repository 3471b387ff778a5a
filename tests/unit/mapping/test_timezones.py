"""$toTimezone and $parseDateTime: IANA zones, DST gaps and folds, explicit policies."""

from __future__ import annotations

import pytest
from tests.unit.mapping.helpers import PATHS, run

from seamline.mapping import MappingError, compile
from seamline.mapping.timezones import localize, parse_datetime, to_timezone, zone


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024-07-01T10:00:00Z", "2024-07-01T12:00:00+02:00"),  # summer time
        ("2024-01-15T10:00:00Z", "2024-01-15T11:00:00+01:00"),  # winter time
        ("2024-03-31T00:59:59Z", "2024-03-31T01:59:59+01:00"),  # just before the spring change
        ("2024-03-31T01:00:00Z", "2024-03-31T03:00:00+02:00"),  # just after it
        ("2024-10-27T00:30:00Z", "2024-10-27T02:30:00+02:00"),  # first 02:30 in autumn
        ("2024-10-27T01:30:00Z", "2024-10-27T02:30:00+01:00"),  # second 02:30
        ("2024-07-01T10:00:00.123Z", "2024-07-01T12:00:00.123+02:00"),  # milliseconds kept
        ("2024-07-01T10:00:00.123456+00:00", "2024-07-01T12:00:00.123456+02:00"),
        ("2024-07-01T10:00:00-04:00", "2024-07-01T16:00:00+02:00"),
    ],
)
def test_instant_with_offset_is_converted(stamp: str, expected: str) -> None:
    assert to_timezone(stamp, "Europe/Berlin") == expected


def test_epoch_milliseconds_are_accepted() -> None:
    assert to_timezone(1_719_828_000_000, "Europe/Berlin") == "2024-07-01T12:00:00.000+02:00"


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("compatible", "2024-03-31T03:30:00+02:00"),
        ("later", "2024-03-31T03:30:00+02:00"),
        ("earlier", "2024-03-31T01:30:00+01:00"),
    ],
)
def test_nonexistent_local_time(policy: str, expected: str) -> None:
    assert to_timezone("2024-03-31T02:30:00", "Europe/Berlin", policy) == expected


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("compatible", "2024-10-27T02:30:00+02:00"),
        ("earlier", "2024-10-27T02:30:00+02:00"),
        ("later", "2024-10-27T02:30:00+01:00"),
    ],
)
def test_ambiguous_local_time(policy: str, expected: str) -> None:
    assert to_timezone("2024-10-27T02:30:00", "Europe/Berlin", policy) == expected


def test_reject_policy_fails_on_gap_and_fold() -> None:
    with pytest.raises(MappingError) as gap:
        to_timezone("2024-03-31T02:30:00", "Europe/Berlin", "reject")
    assert gap.value.code == "mapping.tz_nonexistent"
    with pytest.raises(MappingError) as fold:
        to_timezone("2024-10-27T02:30:00", "Europe/Berlin", "reject")
    assert fold.value.code == "mapping.tz_ambiguous"
    assert to_timezone("2024-10-27T12:00:00", "Europe/Berlin", "reject") == "2024-10-27T12:00:00+01:00"


def test_local_time_in_other_zones() -> None:
    assert to_timezone("2024-03-10T02:30:00", "America/New_York") == "2024-03-10T03:30:00-04:00"
    assert to_timezone("2024-11-03T01:30:00", "America/New_York", "later") == "2024-11-03T01:30:00-05:00"
    assert to_timezone("2024-06-01T12:00:00Z", "UTC") == "2024-06-01T12:00:00+00:00"


def test_bad_input_fails_clearly() -> None:
    with pytest.raises(MappingError) as bad_zone:
        to_timezone("2024-01-01T00:00:00Z", "Mars/Olympus")
    assert bad_zone.value.code == "mapping.timezone"
    with pytest.raises(MappingError) as bad_time:
        to_timezone("yesterday", "Europe/Berlin")
    assert bad_time.value.code == "mapping.timezone"
    with pytest.raises(MappingError, match="policy"):
        to_timezone("2024-01-01T00:00:00", "Europe/Berlin", "nearest")
    assert to_timezone(None, "Europe/Berlin") is None


def test_localize_needs_no_policy_outside_transitions() -> None:
    from datetime import datetime

    moment = localize(datetime(2024, 5, 5, 8, 0), zone("Europe/Berlin"), "reject")
    assert moment.isoformat() == "2024-05-05T08:00:00+02:00"


@pytest.mark.parametrize("path", PATHS)
def test_to_timezone_in_expressions(path: str) -> None:
    expression = compile("$toTimezone(at, 'Europe/Berlin')")
    assert run(expression, {"at": "2024-07-01T10:00:00Z"}, path) == "2024-07-01T12:00:00+02:00"
    assert run(expression, {}, path) is None


@pytest.mark.parametrize(
    ("text", "fmt", "zone_name", "expected"),
    [
        ("31.12.2024 23:59", "%d.%m.%Y %H:%M", "Europe/Berlin", "2024-12-31T23:59:00+01:00"),
        ("2024-07-01 10:00", "%Y-%m-%d %H:%M", None, "2024-07-01T10:00:00+00:00"),
        ("01/07/2024 10:00 +0200", "%d/%m/%Y %H:%M %z", None, "2024-07-01T10:00:00+02:00"),
        ("01/07/2024 10:00 +0200", "%d/%m/%Y %H:%M %z", "UTC", "2024-07-01T08:00:00+00:00"),
        ("2024-03-31 02:30", "%Y-%m-%d %H:%M", "Europe/Berlin", "2024-03-31T03:30:00+02:00"),
    ],
)
def test_parse_datetime(text: str, fmt: str, zone_name: str | None, expected: str) -> None:
    assert parse_datetime(text, fmt, zone_name) == expected


@pytest.mark.parametrize("path", PATHS)
def test_parse_datetime_in_expressions(path: str) -> None:
    expression = compile("$parseDateTime(d, '%d.%m.%Y', 'Europe/Berlin')")
    assert run(expression, {"d": "01.02.2024"}, path) == "2024-02-01T00:00:00+01:00"
    with pytest.raises(MappingError) as info:
        run(expression, {"d": "2024-02-01"}, path)
    assert info.value.code == "mapping.datetime_parse"
