"""Running an aiohttp application until SIGTERM/SIGINT, with bounded headers."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Sequence

from aiohttp import web

logger = logging.getLogger(__name__)


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_header_bytes: int = 8190,
    access_log: bool = False,
) -> web.AppRunner:
    """Start serving ``app``; the caller owns the runner and calls ``runner.cleanup()``."""
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("sidegate.access") if access_log else None,
        max_line_size=max_header_bytes,
        max_field_size=max_header_bytes,
        shutdown_timeout=10.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")


async def wait_for_signal(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
