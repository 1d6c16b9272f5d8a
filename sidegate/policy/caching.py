"""Remembering decisions for a while, for one index only.

A cache belongs to one ``PolicyIndex``: a new bundle gets a new index and a new, empty
cache, swapped in together, so a decision made under an old bundle can never be served
under a new one. The clock is passed in (no I/O here; tests drive time).
"""

from __future__ import annotations

from collections.abc import Callable

from sidegate.policy import rules

_Key = tuple[str, str, str | None, str, str]


class DecisionCache:
    def __init__(
        self,
        index: rules.PolicyIndex,
        *,
        ttl: float,
        clock: Callable[[], float],
        max_entries: int = 65_536,
    ) -> None:
        self.index = index
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        self._entries: dict[_Key, tuple[float, rules.Decision]] = {}

    def decide(self, caller: rules.Caller, model: str, action: str) -> rules.Decision:
        key = (caller.namespace, caller.service_account, caller.tenant, model, action)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now:
            return entry[1]
        decision = self.index.decide(caller, model, action)
        if self._ttl > 0:
            if len(self._entries) >= self._max_entries:
                # Model names and tenants come from clients: the cache must not grow with
                # them. Dropping everything is crude but O(1) and rare.
                self._entries.clear()
            self._entries[key] = (now + self._ttl, decision)
        return decision

    def dismantle(self) -> None:
        """Empty the cache and its index piecemeal (see PolicyIndex.dismantle)."""
        while self._entries:
            self._entries.popitem()
        self.index.dismantle()

    def __len__(self) -> int:
        return len(self._entries)
