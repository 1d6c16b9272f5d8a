"""Running the operator: kopf with Sidegate's registry, logged in the standard ways."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any

import kopf

from sidegate import scraping, serving
from sidegate.operator import cleanup as removing
from sidegate.operator import leadership, metrics
from sidegate.operator.handlers import policies, webhook
from sidegate.operator.kube import ApiClient
from sidegate.operator.state import OperatorState

logger = logging.getLogger(__name__)


def standard_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig (as kubectl would)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@dataclasses.dataclass(frozen=True)
class WebhookListener:
    """Where the injection webhook listens, and its serving certificate (kopf re-reads the
    files when they change, so cert-manager or the chart can renew them)."""

    port: int
    certfile: Path
    keyfile: Path
    # The API server reaches the webhook through the pod's Service, so it listens on all
    # interfaces; TLS and the NetworkPolicy guard it.
    addr: str = "0.0.0.0"  # noqa: S104  # nosec B104

    def server(self) -> kopf.WebhookServer:
        return kopf.WebhookServer(
            addr=self.addr,
            port=self.port,
            certfile=str(self.certfile),
            pkeyfile=str(self.keyfile),
        )


def build_registry(
    state: OperatorState, listener: WebhookListener | None = None, *, reconcile: bool = True
) -> kopf.OperatorRegistry:
    """Every handler of the operator, in a registry of its own (nothing at import time).
    ``reconcile=False`` (``--webhook-only``): the admission webhooks alone, for the chart's
    webhook Deployment; they read the published signing keys and write nothing."""
    registry = kopf.OperatorRegistry()
    if reconcile:
        policies.register(registry, state)
    else:
        webhook.register_client(registry, state)
    if listener is not None:
        # Only with a server: kopf refuses to start with a mutating handler and no server.
        webhook.register(registry, state)

    @kopf.on.startup(registry=registry, id="configure")
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 30  # Events for warnings and errors (invalid policies)
        settings.persistence.finalizer = "sidegate.io/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="sidegate.io"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="sidegate.io"
        )
        if state.peering is not None:
            # One ClusterKopfPeering whatever --namespace serves (kopf would otherwise want a
            # KopfPeering in each served namespace): leader election among the replicas.
            settings.peering.clusterwide = True
            settings.peering.lifetime = state.peering.lifetime
        if not reconcile:
            # A webhook-only process watches nothing, and the chart grants it no right on
            # CRDs or namespaces: kopf's scanning of them (a CRD watch, to follow resources
            # that come and go) would be refused and logged as errors, then warnings, on
            # every start. Its resources are discovered once at start either way.
            settings.scanning.disabled = True
        if listener is not None:
            # The chart owns the MutatingWebhookConfiguration: kopf only serves, so the
            # operator needs no rights on webhook configurations.
            settings.admission.server = listener.server()

    return registry


def run(
    *,
    namespaces: list[str],
    state: OperatorState,
    liveness: str | None,
    listener: WebhookListener | None,
    reconcile: bool = True,
    metrics_port: int | None = None,
) -> int:
    registry = build_registry(state, listener, reconcile=reconcile)

    async def operate() -> None:
        async with contextlib.AsyncExitStack() as stack:
            if metrics_port is not None:
                # Before kopf starts: a port already taken fails the start, loudly.
                port = await stack.enter_async_context(
                    metrics_listener(state.metrics, metrics_port)
                )
                logger.info("metrics listening", extra={"port": port})
            await kopf.operator(
                registry=registry,
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=liveness,
                # The webhook alone needs no leader: every replica answers admission requests.
                **peering_arguments(state.peering if reconcile else None),
            )

    asyncio.run(operate())
    return 0


def metrics_listener(
    served: metrics.Metrics,
    port: int,
    *,
    host: str = scraping.ALL_INTERFACES,
    fresh_seconds: float = scraping.FRESH_SECONDS,
    limits: serving.ConnectionLimits = scraping.LIMITS,
) -> contextlib.AbstractAsyncContextManager[int]:
    """The metrics listener (``--metrics-port``) beside kopf: the shared one, with its
    connection cap and timeouts, serving this process's registry; the certificate's
    expiry is read before each rendering."""
    app = scraping.create_app(served.registry, refresh=served.refresh, fresh_seconds=fresh_seconds)
    return scraping.listening(app, port, host=host, limits=limits)


def peering_arguments(peering: leadership.Peering | None) -> dict[str, Any]:
    """kopf.operator's peering arguments: a leader among replicas (``leadership.py``), or
    standalone (one replica; no peering object needed, nor rights on one)."""
    if peering is None:
        return {"standalone": True}
    return {
        "standalone": False,
        "peering_name": peering.name,
        "priority": peering.priority,
        "identity": peering.identity,
    }


def cleanup(*, namespace: str, deployment: str | None, timeout: float) -> int:
    """``sidegate operator cleanup``, logged in like the operator."""

    async def main() -> int:
        info = standard_login(settings=kopf.OperatorSettings(), logger=logger)
        if info is None:
            logger.error("no service account or kubeconfig to log in with")
            return 1
        client = ApiClient(info)
        try:
            async with asyncio.timeout(timeout):
                await removing.run(client, namespace, deployment)
        except (kopf.TemporaryError, RuntimeError, TimeoutError) as exc:
            logger.error("cleanup incomplete: %s", exc)
            return 1
        finally:
            await client.close()
        return 0

    return asyncio.run(main())
