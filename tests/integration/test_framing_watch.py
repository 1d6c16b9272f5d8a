"""FramingWatch against a provider that breaks its chunked framing, over real sockets.

aiohttp keeps such a parser failure on the connection, not on the body, and stops the read
timeout (SG-P-012); the watch makes it an error on the body. These check what the relay then
sees: every event that parsed before the failure, in order, even when the reader is slow (a
client's write, an audit event awaited), then a ClientPayloadError, at once, with the
provider still holding the connection open.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
import trustme

from sidegate.sidecar.proxying import FramingWatch

HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
HOLD_SECONDS = 30  # the provider keeps the connection far longer than the test waits


def broken_provider(done: asyncio.Event) -> Callable[..., Awaitable[None]]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"7\r\nevent1\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        # The second event and the broken chunk-size line arrive in one segment: the event
        # parses, then the parser fails.
        writer.write(b"7\r\nevent2\n\r\nzz\r\nnot a chunk\r\n")
        await writer.drain()
        try:
            async with asyncio.timeout(HOLD_SECONDS):
                await done.wait()  # held open until the test is done with it
        finally:
            writer.transport.abort()

    return serve


async def read_slowly(answer: aiohttp.ClientResponse, relayed: list[bytes], pause: float) -> None:
    with FramingWatch(answer) as body:
        async for chunk in body:
            relayed.append(chunk)
            await asyncio.sleep(pause)  # a slow client's write, an audit event awaited


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("pause", [0.0, 0.6], ids=["fast-reader", "slow-reader"])
async def test_parsed_events_come_first_then_the_body_breaks(
    tls: bool, pause: float, ca: trustme.CA, server_cert: trustme.LeafCert
) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    done = asyncio.Event()
    server = await asyncio.start_server(
        broken_provider(done), "127.0.0.1", 0, ssl=server_context if tls else None
    )
    port = server.sockets[0].getsockname()[1]
    relayed: list[bytes] = []
    loop = asyncio.get_running_loop()
    try:
        async with aiohttp.ClientSession() as session:
            answer = await session.get(
                f"{'https' if tls else 'http'}://127.0.0.1:{port}/",
                ssl=client_context if tls else False,
                timeout=aiohttp.ClientTimeout(sock_read=HOLD_SECONDS * 2),
            )
            started = loop.time()
            with pytest.raises(aiohttp.ClientPayloadError):
                await read_slowly(answer, relayed, pause)
            elapsed = loop.time() - started
            answer.close()
    finally:
        done.set()
        server.close()
        await server.wait_closed()
    assert b"".join(relayed) == b"event1\nevent2\n"
    # Found by the watch's own timer, not by a read timeout or the provider closing.
    assert elapsed < HOLD_SECONDS / 2, elapsed


async def test_a_whole_body_reads_as_it_would_without_the_watch() -> None:
    """The control: an intact chunked body is read whole, and the watch sets no error."""

    async def intact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEAD + b"7\r\nevent1\n\r\n7\r\nevent2\n\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(intact, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/") as answer,
        ):
            with FramingWatch(answer) as body:
                relayed = [chunk async for chunk in body]
            await asyncio.sleep(0.6)  # past a check of the watch, had it not stopped
            assert answer.content.exception() is None
    finally:
        server.close()
        await server.wait_closed()
    assert b"".join(relayed) == b"event1\nevent2\n"
