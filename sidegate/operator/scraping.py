"""The operator's metrics listener: plain-HTTP ``GET /metrics`` (``--metrics-port``).

kopf's liveness endpoint (``--liveness``) is kopf's own server and takes no route of ours,
so the metrics have a port of their own. It serves the registry and nothing else. Anyone the
NetworkPolicy lets in can reach it, and it shares the event loop with the handlers and the
webhook: it renders the registry (and reads the serving certificate) at most once per
``FRESH_SECONDS`` and answers every scrape in between with that rendering (the sidecar's
listener does the same; the operator may not import the sidecar's), so a client asking as fast
as it can costs only the HTTP exchange, and a scraper sees values at most a second old.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidegate.operator.metrics import Metrics

FRESH_SECONDS = 1.0
# On all interfaces: the scraper reaches the pod over the pod network (the NetworkPolicy
# admits it on this port only).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104  # nosec B104


@dataclasses.dataclass
class Exposition:
    """The registry's last rendering, and when it was made (a monotonic clock)."""

    metrics: Metrics
    fresh_seconds: float = FRESH_SECONDS
    body: bytes = b""
    rendered_at: float | None = None

    def current(self) -> bytes:
        now = time.monotonic()
        if self.rendered_at is None or now - self.rendered_at >= self.fresh_seconds:
            self.metrics.refresh()
            self.body = generate_latest(self.metrics.registry)
            self.rendered_at = now
        return self.body


EXPOSITION = web.AppKey("sidegate.operator_metrics_exposition", Exposition)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[EXPOSITION].current()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(metrics: Metrics, fresh_seconds: float = FRESH_SECONDS) -> web.Application:
    """One route, ``GET /metrics`` (and its HEAD); no request has a body worth reading."""
    app = web.Application(client_max_size=1024)
    app[EXPOSITION] = Exposition(metrics, fresh_seconds)
    app.router.add_get("/metrics", _metrics)
    return app


@contextlib.asynccontextmanager
async def serving(
    metrics: Metrics, port: int, host: str = ALL_INTERFACES, fresh_seconds: float = FRESH_SECONDS
) -> AsyncIterator[int]:
    """The listener, for as long as the context lasts; the port it listens on (``port`` 0:
    one the system picks)."""
    runner = web.AppRunner(create_app(metrics, fresh_seconds), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = next(a for a in runner.addresses if isinstance(a, tuple))
        yield int(bound[1])
    finally:
        await runner.cleanup()
