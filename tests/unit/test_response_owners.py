"""The in-process record of who created each stored response: bounded and expiring."""

from __future__ import annotations

import asyncio

from sidegate.sidecar import ownership

MINE = ownership.Binding("team-a/app", "openai", "gpt-4.1")


def test_bound_records_are_found_until_forgotten() -> None:
    async def scenario() -> None:
        owners = ownership.LocalOwners(max_entries=10)
        assert await owners.get("resp_1") is None
        await owners.bind("resp_1", MINE)
        assert await owners.get("resp_1") == MINE
        await owners.forget("resp_1")
        assert await owners.get("resp_1") is None

    asyncio.run(scenario())


def test_the_oldest_go_first_beyond_the_bound_and_all_after_the_ttl() -> None:
    async def scenario() -> None:
        owners = ownership.LocalOwners(max_entries=3)
        for number in range(5):
            await owners.bind(f"resp_{number}", MINE)
        found = [await owners.get(f"resp_{number}") for number in range(5)]
        assert found == [None, None, MINE, MINE, MINE]
        expired = ownership.LocalOwners(max_entries=3, ttl=-1)
        await expired.bind("resp_x", MINE)
        assert await expired.get("resp_x") is None

    asyncio.run(scenario())


def test_bindings_round_trip_and_garbage_is_no_owner() -> None:
    assert ownership.Binding.decode(MINE.encode()) == MINE
    assert ownership.Binding.decode(b"not json") is None
    assert ownership.Binding.decode(b'["only-two", "fields"]') is None
