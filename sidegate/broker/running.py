"""Running one broker replica: the watches, the TLS API, the probe port.

Replicas share nothing: each builds its state from its own watches, so any number can run
behind the Service and a sidecar may reach any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aiohttp import web

from sidegate.broker import contents, kube, reviews, server, watching
from sidegate.broker.metrics import Metrics

logger = logging.getLogger(__name__)

_CERT_POLL_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Options:
    namespace: str
    certfile: Path
    keyfile: Path
    sidecar_image: str
    # The injected sidecar's config as the chart gives it to the operator (``--sidecar-config``)
    # and the CA the operator adds to it: the pod check compares a pod's config with them.
    sidecar_config: Path
    ca_file: Path | None = None
    listen_port: int = 8443
    probe_port: int = 8080
    audience: str = "sidegate"
    max_wait: float = 30.0
    # The operator's --sidecar-user: fixed, the sidecar runs as 65532; platform, any non-root.
    fixed_user: bool = True
    # A connection with no request in progress (none yet, or headers never finished) is
    # closed after this: both ports face other pods, and aiohttp's own limit is an hour.
    idle_timeout: float = 75.0
    # The sidecars reach the broker through its Service, so it listens on all interfaces;
    # TLS, TokenReview and the NetworkPolicy guard it.
    host: str = "0.0.0.0"  # noqa: S104  # nosec B104


@dataclasses.dataclass(frozen=True)
class Running:
    broker: server.Broker
    api_port: int
    probe_port: int


def tls_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(certfile), str(keyfile))
    return context


def _stamp(*paths: Path) -> tuple[tuple[float, int], ...]:
    stamps = []
    for path in paths:
        try:
            found = path.stat()  # follows the kubelet's ..data symlinks
        except OSError:
            return ()
        stamps.append((found.st_mtime, found.st_size))
    return tuple(stamps)


async def reload_certificate(
    context: ssl.SSLContext, certfile: Path, keyfile: Path, metrics: Metrics
) -> None:
    """Load the serving certificate again when its files change (cert-manager renews it):
    new handshakes use the new one, open connections keep theirs."""
    seen = _stamp(certfile, keyfile)
    while True:
        await asyncio.sleep(_CERT_POLL_SECONDS)
        now = _stamp(certfile, keyfile)
        if not now or now == seen:
            continue
        try:
            context.load_cert_chain(str(certfile), str(keyfile))
        except (OSError, ssl.SSLError) as exc:
            metrics.cert_reloads.labels("failed").inc()
            logger.error("serving certificate not reloaded", extra={"reason": str(exc)})
            continue  # a half-written pair: tried again at the next change
        seen = now
        metrics.cert_reloads.labels("ok").inc()
        logger.info("serving certificate reloaded")


async def _site(
    app: web.Application,
    host: str,
    port: int,
    context: ssl.SSLContext | None,
    idle_timeout: float,
) -> web.AppRunner:
    # aiohttp's keep-alive timer runs from the connection's start and after each response,
    # not while a request is handled: it closes silent connections and unfinished headers,
    # never a long-poll in progress.
    runner = web.AppRunner(
        app, access_log=None, shutdown_timeout=1.0, keepalive_timeout=idle_timeout
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("not listening on a TCP port")


@contextlib.asynccontextmanager
async def started(options: Options, login: kube.Login) -> AsyncIterator[Running]:
    """A broker replica serving until the context exits."""
    metrics = Metrics()
    client = kube.Client(login)
    state = contents.Contents()
    reviewer = reviews.Reviewer(
        client,
        options.audience,
        on_review=lambda result: metrics.token_reviews.labels(result).inc(),
    )
    broker = server.Broker(
        state,
        reviewer,
        client,
        options.sidecar_image,
        options.audience,
        options.max_wait,
        metrics,
        sidecar_config=options.sidecar_config,
        ca_file=options.ca_file,
        fixed_user=options.fixed_user,
    )
    context = tls_context(options.certfile, options.keyfile)
    tasks = [
        asyncio.create_task(
            watching.keep_in_sync(client, options.namespace, kind, state), name=f"watch {kind}"
        )
        for kind in (contents.SECRETS, contents.CONFIGMAPS)
    ]
    tasks.append(
        asyncio.create_task(
            reload_certificate(context, options.certfile, options.keyfile, metrics),
            name="certificate reloads",
        )
    )
    broker.tasks.extend(tasks)
    runners: list[web.AppRunner] = []
    try:
        runners.append(
            await _site(
                server.create_probe_app(broker),
                options.host,
                options.probe_port,
                None,
                options.idle_timeout,
            )
        )
        runners.append(
            await _site(
                server.create_app(broker),
                options.host,
                options.listen_port,
                context,
                options.idle_timeout,
            )
        )
        yield Running(broker, _port(runners[1]), _port(runners[0]))
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task  # a task that failed was logged when it did
        await client.close()


def own_namespace(environ: Mapping[str, str]) -> str | None:
    """$POD_NAMESPACE, else the service account's namespace file."""
    if environ.get("POD_NAMESPACE"):
        return environ["POD_NAMESPACE"]
    try:
        return (kube.SERVICE_ACCOUNT / "namespace").read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


async def serve(options: Options, login: kube.Login) -> int:
    async with started(options, login) as running:
        logger.info(
            "broker listening",
            extra={
                "namespace": options.namespace,
                "port": running.api_port,
                "probe_port": running.probe_port,
            },
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        logger.info("shutting down")
    return 0
