"""The metrics listener: ``GET /metrics`` for a Prometheus scraper outside the pod.

The API (``listen``) and the admin API stay on loopback; this second listener (``metrics``
in the config) serves the same registry and nothing else: no route of the API, no health
or readiness detail, no admin data. What the registry holds is safe to show anyone who can
reach the pod: counters and gauges whose label values come from the config or from fixed
sets of codes (routes, providers, route patterns, HTTP statuses, reason codes), never a
client's string, a tenant, a key or a token, so their number is bounded by the config.

Anyone on the pod network can reach it, and it shares the event loop with the API: each
rendering of the registry costs milliseconds, so a client that asks for ``/metrics`` as fast
as it can would take the loop from the requests the sidecar proxies. The listener renders
at most once per ``FRESH_SECONDS`` and answers every scrape in between with that rendering:
a scraper (every 10 seconds or more) sees values at most that old, a flood costs only the
HTTP exchange.
"""

from __future__ import annotations

import dataclasses
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

FRESH_SECONDS = 1.0


@dataclasses.dataclass
class Exposition:
    """The registry's last rendering, and when it was made (a monotonic clock)."""

    registry: CollectorRegistry
    fresh_seconds: float = FRESH_SECONDS
    body: bytes = b""
    rendered_at: float | None = None

    def current(self) -> bytes:
        now = time.monotonic()
        if self.rendered_at is None or now - self.rendered_at >= self.fresh_seconds:
            self.body = generate_latest(self.registry)
            self.rendered_at = now
        return self.body


EXPOSITION = web.AppKey("sidegate.metrics_exposition", Exposition)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text format."""
    return _response(generate_latest(registry))


def _response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics(request: web.Request) -> web.Response:
    return _response(request.app[EXPOSITION].current())


def create_app(
    registry: CollectorRegistry, fresh_seconds: float = FRESH_SECONDS
) -> web.Application:
    """An application with one route, ``GET /metrics`` (and the HEAD aiohttp adds to it);
    anything else is aiohttp's 404 or 405, and no request has a body worth reading."""
    app = web.Application(client_max_size=1024)
    app[EXPOSITION] = Exposition(registry, fresh_seconds)
    app.router.add_get("/metrics", _metrics)
    return app
