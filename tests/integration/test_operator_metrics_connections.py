"""The operator's metrics listener holds a bounded number of connections (real sockets).

It shares the process's file descriptors with kopf's API watches and the webhook's TLS
listener, and the NetworkPolicy admits anyone to it: connections past the cap get a 503 and
are closed at once, and a connection that never sends a request is closed after the
keep-alive timeout, after which a scrape is answered again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from sidegate import scraping, serving
from sidegate.operator import metrics, running

CAP = 8
IDLE_SECONDS = 1.0
LIMITS = serving.ConnectionLimits(max_connections=CAP, keepalive_timeout=IDLE_SECONDS)
LEADER = "sidegate_operator_leader"


@contextlib.asynccontextmanager
async def idle_connections(
    port: int, count: int
) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """``count`` connections that send nothing, closed on the way out."""
    opened = [await asyncio.open_connection("127.0.0.1", port) for _ in range(count)]
    try:
        yield opened
    finally:
        for _, writer in opened:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """All the server wrote before it closed the connection (EOF within ``within``)."""
    async with asyncio.timeout(within):
        return await reader.read()


async def scrape(port: int) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as answer,
    ):
        return answer.status, await answer.text()


@pytest.mark.asyncio
async def test_idle_connections_past_the_cap_are_refused_and_idle_ones_closed() -> None:
    served = metrics.Metrics()
    async with (
        running.metrics_listener(served, 0, host="127.0.0.1", limits=LIMITS) as port,
        idle_connections(port, CAP) as held,
    ):
        # The cap is full of connections that never send a byte: each one more is answered
        # 503 and closed by the server at once, so it holds no descriptor.
        async with idle_connections(port, 3 * CAP) as excess:
            for reader, _ in excess:
                answer = await closed_by_server(reader, within=5)
                assert answer.startswith(b"HTTP/1.1 503 "), answer
                assert b"Connection: close" in answer

        # Those that got in are closed by the server after the keep-alive timeout, having
        # sent nothing: no answer, only the close.
        for reader, _ in held:
            assert await closed_by_server(reader, within=IDLE_SECONDS + 5) == b""

        status, text = await scrape(port)
        assert status == 200
        assert LEADER in text


@pytest.mark.asyncio
async def test_the_operators_listener_keeps_the_shared_limits_by_default() -> None:
    """Without ``limits`` the operator serves with the shared listener's cap: one more than
    ``scraping.LIMITS.max_connections`` idle connections and the last is refused."""
    cap = scraping.LIMITS.max_connections
    async with (
        running.metrics_listener(metrics.Metrics(), 0, host="127.0.0.1") as port,
        idle_connections(port, cap),
        idle_connections(port, 1) as ((reader, _),),
    ):
        assert (await closed_by_server(reader, within=5)).startswith(b"HTTP/1.1 503 ")
