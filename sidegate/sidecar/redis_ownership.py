"""Stored-response owners in Redis, so every replica knows who created a response.
Imported only with the Redis rate-limit backend, whose connection it shares."""

from __future__ import annotations

import logging

import redis.exceptions

from sidegate.sidecar import ownership
from sidegate.sidecar.redis_limiting import RedisLimiter

logger = logging.getLogger(__name__)

_FAILURES = (TimeoutError, OSError, redis.exceptions.RedisError)


class RedisOwners:
    """One key per response id, expiring with the binding. Unreachable Redis fails closed
    whatever the limiter's fail mode: ownership is access control, not a quota."""

    def __init__(self, limiter: RedisLimiter, key_prefix: str, ttl: int = ownership.TTL_SECONDS):
        self._limiter = limiter
        self._prefix = key_prefix + "resp:"
        self._ttl = ttl

    def _unavailable(self, exc: BaseException) -> ownership.OwnersUnavailable:
        logger.error("response owners unreachable in redis", extra={"error": type(exc).__name__})
        return ownership.OwnersUnavailable("stored responses cannot be checked; try again shortly")

    async def bind(self, response_id: str, binding: ownership.Binding) -> None:
        try:
            await self._limiter.client.set(
                self._prefix + response_id, binding.encode(), ex=self._ttl
            )
        except _FAILURES as exc:
            raise self._unavailable(exc) from None

    async def get(self, response_id: str) -> ownership.Binding | None:
        try:
            raw = await self._limiter.client.get(self._prefix + response_id)
        except _FAILURES as exc:
            raise self._unavailable(exc) from None
        return None if raw is None else ownership.Binding.decode(raw)

    async def forget(self, response_id: str) -> None:
        try:
            await self._limiter.client.delete(self._prefix + response_id)
        except _FAILURES as exc:
            raise self._unavailable(exc) from None
