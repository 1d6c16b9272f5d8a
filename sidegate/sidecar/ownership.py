"""Who created each stored Responses API response: only its creator may use it again.

The provider keeps a stored response under the organisation's key, so anyone holding that
key could read, continue, cancel or delete it by id. Behind one shared key the sidecar is
the only place the creator is known: it records, for each response created through it, the
caller (namespace/service account), provider and model, and lets only that caller use the
id again. An id with no record (created before Sidegate was in front, or forgotten after
``TTL_SECONDS``) has no owner and is refused like another caller's.

``LocalOwners`` keeps the records in this process (bounded, lost at restart); with the Redis
rate-limit backend, ``redis_ownership.RedisOwners`` keeps them in Redis, for every replica.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import OrderedDict
from typing import Protocol

from sidegate import errors

# How long a binding is kept: OpenAI keeps stored responses 30 days unless deleted.
TTL_SECONDS = 30 * 24 * 3600


class NotOwned(errors.RequestError):
    status = 403
    error_type = "permission_error"
    code = "response_not_owned"


class OwnersUnavailable(errors.RequestError):
    status = 503
    error_type = "api_error"
    code = "response_owners_unavailable"


@dataclasses.dataclass(frozen=True, slots=True)
class Binding:
    owner: str  # "namespace/service-account"
    provider: str
    model: str  # as the creator asked for it: policy decides later operations on it

    def encode(self) -> str:
        return json.dumps([self.owner, self.provider, self.model])

    @classmethod
    def decode(cls, raw: str | bytes) -> Binding | None:
        try:
            owner, provider, model = json.loads(raw)
        except (ValueError, TypeError):
            return None
        return cls(str(owner), str(provider), str(model))


def not_owned(response_id: str) -> NotOwned:
    # One answer whether another caller owns it or nobody does: no oracle for others' ids.
    return NotOwned(
        f"response {response_id!r} was not created through this gateway by this caller "
        "(or its record has expired)",
        param="response_id",
    )


class Owners(Protocol):
    async def bind(self, response_id: str, binding: Binding) -> None: ...

    async def get(self, response_id: str) -> Binding | None: ...

    async def forget(self, response_id: str) -> None: ...


class LocalOwners:
    """Records in memory, the oldest dropped beyond ``max_entries`` and after ``ttl``."""

    def __init__(self, max_entries: int, ttl: float = TTL_SECONDS) -> None:
        self._max = max_entries
        self._ttl = ttl
        self._entries: OrderedDict[str, tuple[float, Binding]] = OrderedDict()

    async def bind(self, response_id: str, binding: Binding) -> None:
        self._entries[response_id] = (time.monotonic() + self._ttl, binding)
        self._entries.move_to_end(response_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    async def get(self, response_id: str) -> Binding | None:
        found = self._entries.get(response_id)
        if found is None:
            return None
        if found[0] < time.monotonic():
            del self._entries[response_id]
            return None
        return found[1]

    async def forget(self, response_id: str) -> None:
        self._entries.pop(response_id, None)
