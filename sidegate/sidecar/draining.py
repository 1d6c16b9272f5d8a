"""Requests in flight, so a shutdown can wait for them and then cut what remains.

``drain`` is the shutdown itself (keep accepting, stop accepting, wait, cut); ``InFlight``
is the part the request path sees: the middleware registers each proxied request's task here,
and a stream being cut asks ``cutting`` to tell the sidecar's own cut from a client that
went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

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


async def drain(
    runner: web.AppRunner,
    in_flight: InFlight,
    *,
    drain_seconds: float,
    grace_seconds: float,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Envoy's drain, nginx's graceful quit: the shutdown after SIGTERM.

    1. For ``drain_seconds`` everything goes on as before, new connections included: the
       application in the same pod may still be finishing its own requests.
    2. Then the listener closes and idle keep-alive connections are closed.
    3. Requests in flight get ``grace_seconds`` (the one shutdown timeout) to finish.
    4. What remains is cut: streams end with an error event and no terminating chunk,
       waiting requests get a 503, and the audit records status 503 ``sidecar_shutdown``.
    A second signal skips what is left of the drain and the grace: what is in flight is cut
    at once (a second Ctrl-C at a terminal). The caller then runs ``runner.cleanup()``: the
    application's cleanup (the audit trail is written last).
    """
    in_flight.draining = True
    logger.info(
        "draining",
        extra={"drain_seconds": drain_seconds, "grace_seconds": grace_seconds},
    )
    loop = asyncio.get_running_loop()
    hurry = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, hurry.set)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_seconds):
                await hurry.wait()
        for site in list(runner.sites):
            await site.stop()
        if runner.server is not None:
            runner.server.pre_shutdown()  # idle keep-alive connections close now
        idle = asyncio.create_task(in_flight.wait_idle(grace_seconds))
        hurried = asyncio.create_task(hurry.wait())
        await asyncio.wait((idle, hurried), return_when=asyncio.FIRST_COMPLETED)
        hurried.cancel()
        if not (idle.done() and idle.result()):
            idle.cancel()
            await in_flight.cut()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
