"""Which replica leads: kopf's peering rule as `leadership.leads` reads it (pure)."""

from __future__ import annotations

import datetime

from sidegate.operator import leadership

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
ME = leadership.Peering("sidegate-sidegate-system", "me", priority=-100, lifetime=60)


def entry(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, object]:
    seen = NOW - datetime.timedelta(seconds=seconds_ago)
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen.isoformat()}


def test_alone_it_leads() -> None:
    assert leadership.leads({"me": entry(-100)}, ME, NOW)


def test_a_live_peer_started_earlier_leads_instead() -> None:
    assert not leadership.leads({"me": entry(-100), "old": entry(-50)}, ME, NOW)
    assert leadership.leads({"me": entry(-100), "new": entry(-150)}, ME, NOW)


def test_a_dead_peer_counts_no_more() -> None:
    status = {"me": entry(-100), "old": entry(-50, seconds_ago=61)}
    assert leadership.leads(status, ME, NOW)


def test_the_same_priority_pauses_both_as_kopf_does() -> None:
    assert not leadership.leads({"me": entry(-100), "twin": entry(-100)}, ME, NOW)


def test_not_yet_announced_or_gone_stale_it_does_not_lead() -> None:
    assert not leadership.leads({}, ME, NOW)
    assert not leadership.leads({"me": entry(-100, seconds_ago=120)}, ME, NOW)
    assert not leadership.leads({"me": None}, ME, NOW)  # kopf's goodbye (lifetime 0)


def test_priorities_fall_with_start_time_and_never_tie() -> None:
    earlier, later = leadership.priority(1000.0), leadership.priority(1000.002)
    assert earlier > later
    assert len({leadership.priority(1000.0) for _ in range(50)}) > 1  # random low digits
