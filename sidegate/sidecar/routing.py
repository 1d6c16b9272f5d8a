"""Model name → provider: exact names first, then globs in config order."""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable

from sidegate.sidecar import settings

_GLOB_CHARS = frozenset("*?[")
# Client-chosen model names are unbounded input; the memo of glob lookups is not.
_MEMO_LIMIT = 4096


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    provider: str
    pattern: str  # the route's `model` as configured: a bounded label for metrics
    upstream_model: str | None


class RouteTable:
    def __init__(self, routes: Iterable[settings.Route]) -> None:
        self._exact: dict[str, Target] = {}
        self._globs: list[tuple[re.Pattern[str], Target]] = []
        for route in routes:
            target = Target(route.provider, route.model, route.upstream_model)
            if _GLOB_CHARS.isdisjoint(route.model):
                self._exact.setdefault(route.model, target)
            else:
                self._globs.append((re.compile(fnmatch.translate(route.model)), target))
        self._memo: dict[str, Target | None] = {}

    def resolve(self, model: str) -> Target | None:
        """The route for ``model``, or None when no route serves it. Case-sensitive."""
        target = self._exact.get(model)
        if target is not None:
            return target
        try:
            return self._memo[model]
        except KeyError:
            pass
        found = next((t for pattern, t in self._globs if pattern.match(model)), None)
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[model] = found
        return found

    def listed_models(self) -> list[Target]:
        """Routes with exact names: the models `/v1/models` can enumerate."""
        return list(self._exact.values())
