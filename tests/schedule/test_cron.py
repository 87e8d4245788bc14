"""Cron slots keep their local hour across daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from swarm_maint.schedule.cron import CronSpec, resolve_timezone


def utc_hour_of_next(spec: CronSpec, when: datetime) -> int:
    return datetime.fromtimestamp(spec.next_after(when.timestamp()), UTC).hour


@pytest.mark.parametrize("how", ["named", "TZ"])
def test_a_daily_slot_stays_at_its_local_hour_across_dst(
        how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "TZ":
        monkeypatch.setenv("TZ", "Europe/Berlin")
        tz = resolve_timezone("")  # the system's zone, with its rules
    else:
        tz = resolve_timezone("Europe/Berlin")
    spec = CronSpec("0 3 * * *", tz)
    assert utc_hour_of_next(spec, datetime(2027, 1, 10, tzinfo=UTC)) == 2   # CET
    assert utc_hour_of_next(spec, datetime(2027, 7, 10, tzinfo=UTC)) == 1   # CEST


def test_the_system_zone_without_tz_is_a_real_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TZ", raising=False)
    tz = resolve_timezone("")
    # /etc/localtime (Debian always has it) read as a zone file with its rules, not the
    # fixed offset of today
    from zoneinfo import ZoneInfo

    assert isinstance(tz, ZoneInfo) and tz.key == "localtime"


def test_unknown_zones_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown time zone 'Nowhere/City'"):
        resolve_timezone("Nowhere/City")
