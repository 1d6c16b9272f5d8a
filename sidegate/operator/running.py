"""Running the operator: kopf with Sidegate's registry, logged in the standard ways."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf

from sidegate.operator.handlers import policies


def standard_login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In a pod: the service account; elsewhere: the kubeconfig (as kubectl would)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def build_registry(
    bundle_secret: str,
    login: Callable[..., kopf.ConnectionInfo | None] = standard_login,
    *,
    namespace: str = "sidegate-system",
    overlap: float = 300.0,
) -> kopf.OperatorRegistry:
    """Every handler of the operator, in a registry of its own (nothing at import time)."""
    registry = kopf.OperatorRegistry()
    state = policies.OperatorState(
        login=login, bundle_secret=bundle_secret, namespace=namespace, overlap=overlap
    )
    policies.register(registry, state)

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

    return registry


def run(
    *,
    namespaces: list[str],
    bundle_secret: str,
    liveness: str | None,
    own_namespace: str,
    overlap: float,
) -> int:
    registry = build_registry(bundle_secret, namespace=own_namespace, overlap=overlap)
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=False,
            liveness_endpoint=liveness,
        )
    )
    return 0
