"""CPU the sidecar spends per provider chunk reading a body through
``proxying.FramingWatch`` (a timer per body asks the connection whether its parser failed;
it counts the bytes it hands out), against aiohttp's bare ``iter_any``. One process: a local
aiohttp server streams CHUNKS small chunks, each written on its own with a pause so each is
its own read, and the client reads them both ways, alternately, ROUNDS times.
Usage: uv run python benchmarks/body_reading.py
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from sidegate.sidecar import proxying

CHUNKS = 2_000
ROUNDS = 7
EVENT = b'data: {"choices": [{"delta": {"content": "word"}}]}\n\n'


async def stream(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(CHUNKS):
        await response.write(EVENT)
        await asyncio.sleep(0.0001)  # one read per event: the client gets a turn
    await response.write_eof()
    return response


async def bare(answer: aiohttp.ClientResponse) -> int:
    reads = 0
    async for _ in answer.content.iter_any():
        reads += 1
    return reads


async def watched(answer: aiohttp.ClientResponse) -> int:
    reads = 0
    with proxying.FramingWatch(answer) as body:
        async for _ in body:
            reads += 1
    return reads


async def read_all(
    session: aiohttp.ClientSession,
    url: str,
    reader: Callable[[aiohttp.ClientResponse], Awaitable[int]],
) -> tuple[float, int]:
    started = time.process_time()
    async with session.get(url) as answer:
        reads = await reader(answer)
    return time.process_time() - started, reads


async def main() -> None:
    app = web.Application()
    app.router.add_get("/", stream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/"
    readers = {"iter_any": bare, "FramingWatch": watched}
    results: dict[str, list[tuple[float, int]]] = {name: [] for name in readers}
    async with aiohttp.ClientSession() as session:
        for _ in range(ROUNDS):
            for name, reader in readers.items():
                results[name].append(await read_all(session, url, reader))
    await runner.cleanup()
    print(f"| reader | CPU per event ({CHUNKS} events, server included) | reads per body |")
    print("| --- | --- | --- |")
    for name, runs in results.items():
        per_event = statistics.median(seconds / CHUNKS * 1e6 for seconds, _ in runs)
        reads = statistics.median(reads for _, reads in runs)
        print(f"| `{name}` | {per_event:.1f} us | {reads:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
