"""Real servers for tests: aiohttp apps on 127.0.0.1 in a background event loop thread,
so the official SDKs' blocking clients can call them from the test thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from aiohttp import web

from sidegate import serving

T = TypeVar("T")


class LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def serve(self, app: web.Application, ssl_context: Any = None, **runner_kwargs: Any) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None, **runner_kwargs)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
            await site.start()
            self._runners.append(runner)
            return serving.bound_port(runner)

        return self.run(start())

    def close(self) -> None:
        if self.loop.is_closed():
            return

        async def stop() -> None:
            # A TLS connection whose peer has not answered the close_notify yet is still
            # open after cleanup (asyncio waits up to 30 s for it); the loop is closed next,
            # so its socket would be left for the garbage collector, whose ResourceWarning
            # then fails whichever test happens to be running. What is left is cut.
            transports = [
                handler.transport
                for runner in self._runners
                if runner.server is not None
                for handler in runner.server.connections
            ]
            for runner in reversed(self._runners):
                await runner.cleanup()
            for transport in transports:
                if transport is not None:  # closing already, for TLS: waiting on the peer
                    transport.abort()
            for _ in range(3):  # abort() closes the socket on a later loop iteration
                await asyncio.sleep(0)

        self.run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()
