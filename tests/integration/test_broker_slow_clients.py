"""Hostile in-cluster clients of the broker (a real replica on kmock, real sockets, real
TLS): connections that send nothing, or start a request and never finish its headers. The
probe port is open to every pod (the NetworkPolicy cannot know the scraper), the TLS port to
any pod a namespace admin labels; aiohttp's own idle limit is an hour, so each such
connection would hold the broker's memory and a file descriptor that long. They are closed
after ``idle_timeout``; a long-poll in progress is not idle and runs its full wait."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trustme

from tests.helpers import brokers

IDLE = 1.0


@pytest.fixture
async def world(
    tmp_path: Path, ca: trustme.CA, server_cert: trustme.LeafCert
) -> AsyncIterator[brokers.World]:
    async with brokers.world(tmp_path, ca, server_cert, idle_timeout=IDLE) as running_world:
        yield running_world


async def closed_within(
    port: int, seconds: float, sent: bytes, context: ssl.SSLContext | None
) -> bool:
    """Whether the broker closes a connection that sends ``sent`` and then nothing."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost" if context else None
    )
    try:
        writer.write(sent)
        await writer.drain()
        try:
            async with asyncio.timeout(seconds):
                await reader.read()  # b"" (or a reset) once the broker closes it
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLError):
            pass
        return True
    finally:
        writer.close()
        with contextlib.suppress(ConnectionResetError, ssl.SSLError, BrokenPipeError):
            await writer.wait_closed()


UNFINISHED = b"GET /healthz HTTP/1.1\r\nHost: broker\r\nX-Slow: "


@pytest.mark.parametrize("sent", [b"", UNFINISHED], ids=["silent", "unfinished-headers"])
async def test_idle_and_unfinished_connections_are_closed(
    world: brokers.World, ca: trustme.CA, sent: bytes
) -> None:
    replica = world.replica
    assert await closed_within(replica.probe_port, IDLE + 3, sent, None)
    assert await closed_within(replica.api_port, IDLE + 3, sent, brokers.client_context(ca))


async def test_a_long_poll_longer_than_the_idle_limit_still_runs(world: brokers.World) -> None:
    token = await world.pod_token()
    status, answer = await world.deliver(token)
    assert status == 200
    status, _ = await world.deliver(token, after=answer["version"], wait=IDLE * 2)
    assert status == 304
