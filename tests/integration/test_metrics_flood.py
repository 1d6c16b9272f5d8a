"""A hostile client on the pod network floods the sidecar's metrics listener (the cli's
listener: ``serving.start`` with the metrics connection cap, over real sockets). Rendering
the registry costs milliseconds of the event loop the API shares, so the listener renders at
most once per ``FRESH_SECONDS``, however many scrapes arrive; a scraper still sees new
values after that long."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from sidegate import scraping, serving

SCRAPES = 400
CONNECTIONS = 32  # under the listener's default cap of 64


class Renders(Collector):
    """Counts how often the registry is rendered (each rendering collects every collector)."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        self.count += 1
        yield GaugeMetricFamily("renders", "renderings so far", value=self.count)


@pytest.mark.asyncio
async def test_a_flood_of_scrapes_renders_the_registry_once_per_interval() -> None:
    registry = CollectorRegistry()
    renders = Renders()
    registry.register(renders)
    served = Counter("served", "a counter the test moves", registry=registry)
    runner = await serving.start(
        scraping.create_app(registry),
        "127.0.0.1",
        0,
        limits=serving.ConnectionLimits(max_connections=64),
    )
    url = f"http://127.0.0.1:{serving.bound_port(runner)}/metrics"
    try:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def scrape() -> str:
                async with session.get(url) as answer:
                    assert answer.status == 200
                    return await answer.text()

            started = time.monotonic()
            bodies = await asyncio.gather(*(scrape() for _ in range(SCRAPES)))
            elapsed = time.monotonic() - started
            assert all("served_total 0.0" in body for body in bodies)
            allowed = math.ceil(elapsed / scraping.FRESH_SECONDS) + 1
            assert renders.count <= allowed, (renders.count, elapsed)

            served.inc()
            await asyncio.sleep(scraping.FRESH_SECONDS)
            assert "served_total 1.0" in await scrape()  # fresh again after the interval
    finally:
        await runner.cleanup()
