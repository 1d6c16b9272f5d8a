"""The metrics listener: ``GET /metrics`` for a Prometheus scraper outside the pod.

The API (``listen``) and the admin API stay on loopback; this second listener (``metrics``
in the config) serves the same registry and nothing else: no route of the API, no health
or readiness detail, no admin data. What the registry holds is safe to show anyone who can
reach the pod: counters and gauges whose label values come from the config or from fixed
sets of codes (routes, providers, route patterns, HTTP statuses, reason codes), never a
client's string, a tenant, a key or a token, so their number is bounded by the config.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

REGISTRY = web.AppKey("sidegate.metrics_registry", CollectorRegistry)


def exposition(registry: CollectorRegistry) -> web.Response:
    """The registry in Prometheus' text format."""
    return web.Response(
        body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def _metrics(request: web.Request) -> web.Response:
    return exposition(request.app[REGISTRY])


def create_app(registry: CollectorRegistry) -> web.Application:
    """An application with one route, ``GET /metrics`` (and the HEAD aiohttp adds to it);
    anything else is aiohttp's 404 or 405, and no request has a body worth reading."""
    app = web.Application(client_max_size=1024)
    app[REGISTRY] = registry
    app.router.add_get("/metrics", _metrics)
    return app
