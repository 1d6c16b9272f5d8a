"""The metrics listener of both programs: ``GET /metrics`` for a Prometheus scraper.

The sidecar (config ``metrics``) and the operator (``--metrics-port``) each serve their
registry on a listener of its own and nothing else: no route of the API, no health or
readiness detail, no admin data. What a registry holds is safe to show anyone who can reach
the pod: counters and gauges whose label values come from the config or from fixed sets
(routes, providers, HTTP statuses, reason codes, outcomes), never a client's string, a
tenant, a key or a token, so their number is bounded.

Anyone the NetworkPolicy lets in can reach it, and it shares the event loop with the
sidecar's requests or the operator's handlers and webhook. So:

* rendering a registry costs milliseconds: it is rendered at most once per
  ``FRESH_SECONDS`` and every scrape in between gets that rendering, so a client asking as
  fast as it can costs only the HTTP exchange, and a scraper (every 10 seconds or more)
  sees values at most that old;
* connections are served by ``serving.start`` with ``LIMITS``: at most 64 open (past it a
  new one gets a 503 and is closed), a header timeout, and an idle connection, one that
  never sent a request included, closed after the keep-alive timeout. Sockets held open
  would otherwise take file descriptors the process needs for its own work (the operator's
  API watches, the webhook's listener).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from sidegate import serving

FRESH_SECONDS = 1.0
# A scraper needs one or two connections: at most 64 open at once (the sidecar's
# `metrics.max_connections` default); the guarded server's header timeout (10 s) and
# keep-alive timeout (75 s, aiohttp's own is an hour), which also closes a connection that
# never sends a request.
LIMITS = serving.ConnectionLimits(max_connections=64)
# On all interfaces: the scraper reaches the pod over the pod network (the NetworkPolicy
# admits it on this port only), and the listener serves metrics alone.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  # nosec B104


def _nothing_to_refresh() -> None:
    return None


@dataclasses.dataclass
class Exposition:
    """The registry's last rendering, and when it was made (a monotonic clock).
    ``refresh`` brings what is read rather than counted up to date before each rendering
    (the operator's serving certificate expiry)."""

    registry: CollectorRegistry
    refresh: Callable[[], None] = _nothing_to_refresh
    fresh_seconds: float = FRESH_SECONDS
    body: bytes = b""
    rendered_at: float | None = None

    def current(self) -> bytes:
        now = time.monotonic()
        if self.rendered_at is None or now - self.rendered_at >= self.fresh_seconds:
            self.refresh()
            self.body = generate_latest(self.registry)
            self.rendered_at = now
        return self.body


EXPOSITION = web.AppKey("sidegate.metrics_exposition", Exposition)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text format, rendered now."""
    return _response(generate_latest(registry))


def _response(body: bytes) -> web.Response:
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _metrics(request: web.Request) -> web.Response:
    return _response(request.app[EXPOSITION].current())


def create_app(
    registry: CollectorRegistry,
    *,
    refresh: Callable[[], None] = _nothing_to_refresh,
    fresh_seconds: float = FRESH_SECONDS,
) -> web.Application:
    """An application with one route, ``GET /metrics`` (and the HEAD aiohttp adds to it);
    anything else is aiohttp's 404 or 405, and no request has a body worth reading."""
    app = web.Application(client_max_size=1024)
    app[EXPOSITION] = Exposition(registry, refresh, fresh_seconds)
    app.router.add_get("/metrics", _metrics)
    return app


async def start(
    app: web.Application, host: str, port: int, *, limits: serving.ConnectionLimits = LIMITS
) -> web.AppRunner:
    """Serve ``app`` (from ``create_app``) with connection limits; the caller owns the
    runner and calls ``runner.cleanup()``."""
    return await serving.start(app, host, port, limits=limits)


@contextlib.asynccontextmanager
async def listening(
    app: web.Application,
    port: int,
    *,
    host: str = ALL_INTERFACES,
    limits: serving.ConnectionLimits = LIMITS,
) -> AsyncIterator[int]:
    """The listener, for as long as the context lasts; the port it listens on (``port`` 0:
    one the system picks)."""
    runner = await start(app, host, port, limits=limits)
    try:
        yield serving.bound_port(runner)
    finally:
        await runner.cleanup()
