"""Requests in flight, so a shutdown can wait for them and then cut what remains.

The drain itself (keep accepting, stop accepting, wait, cut) is ``serving.drain``; this is
the part the request path sees: the middleware registers each proxied request's task here,
and a stream being cut asks ``cutting`` to tell the sidecar's own cut from a client that
went away.
"""

from __future__ import annotations

import asyncio
import logging

logger = logging.getLogger(__name__)


class InFlight:
    """The tasks of the requests being answered, and whether the sidecar is shutting down."""

    __slots__ = ("_idle", "_tasks", "cutting", "draining")

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[object]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False  # SIGTERM received: still serving, /readyz says so
        self.cutting = False  # the grace period is over: what is left is being cancelled

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: asyncio.Task[object]) -> None:
        self._tasks.add(task)
        self._idle.clear()

    def discard(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self._idle.set()

    async def wait_idle(self, within: float) -> bool:
        """True if every request finished within ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def cut(self) -> int:
        """Cancel what is still running; each stream ends with an error event. Returns how
        many were cut, once their handlers have written their last bytes."""
        self.cutting = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            logger.warning(
                "grace period over: cutting requests still in flight", extra={"count": len(tasks)}
            )
            await asyncio.wait(tasks)
        return len(tasks)
