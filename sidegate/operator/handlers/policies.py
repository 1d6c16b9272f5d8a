"""RBACPolicy → status and the namespace's signed bundle, ``sidegate-bundle-<ns>`` in the
release namespace.

Thin handlers: read the object, call pure functions (validation, ``bundle.to_bundle``), sign
and apply (``publishing.py``). Idempotent: the stored bundle is verified and compared with the
compiled one, and written only when it differs, so replayed events, resumes and retries write
nothing new.
"""

from __future__ import annotations

import datetime
from typing import Any

import kopf
from pydantic import ValidationError

from sidegate.operator import leadership, metrics
from sidegate.operator.handlers import compiling, release, upkeep
from sidegate.operator.state import RESOURCE, OperatorState
from sidegate.policy import models


def describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        where = ".".join(
            str(p) for p in error["loc"] if p not in ("ServiceAccount", "Namespace", "Tenant")
        )
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def condition(ready: bool, reason: str, message: str) -> dict[str, str]:
    return {
        "type": "Ready",
        "status": "True" if ready else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    upkeep.register(registry, state)

    @kopf.on.login(registry=registry, id="login")
    async def login(
        **kwargs: Any,
    ) -> kopf.ConnectionInfo | None:  # async: the client needs the loop
        info = state.login(**kwargs)
        if info is not None:
            await state.use_client(info)
            # The Secrets of the release namespace (sources, keys, bundles): watched by the
            # leader only, or always when standalone.
            if state.peering is None:
                release.start(state)
            else:
                leadership.start(state, state.peering)
        return info

    @kopf.on.cleanup(registry=registry, id="close")
    async def close(**_: Any) -> None:
        await leadership.stop(state)
        await release.stop(state)
        if state.client is not None:
            await state.client.close()

    # Explicit ids: kopf keys progress annotations and index kwargs by them, and a nested
    # function's qualified name ("register.<locals>...") would leak into both.
    @kopf.index(*RESOURCE, registry=registry, id="valid_policies")
    def valid_policies(
        body: kopf.Body, namespace: str | None, **_: Any
    ) -> dict[str, models.RBACPolicy] | None:
        """The valid policies of every namespace: what its bundle is compiled from."""
        if namespace is None:
            return None
        try:
            return {namespace: compiling.validate(body)}
        except ValidationError:
            return None  # an invalid policy never reaches a bundle

    # kopf's handler protocols cannot name index kwargs (valid_policies) for mypy.
    @kopf.on.resume(*RESOURCE, registry=registry, id="reconcile")  # type: ignore[arg-type,unused-ignore]
    @kopf.on.create(*RESOURCE, registry=registry, id="reconcile")  # type: ignore[arg-type,unused-ignore]
    @kopf.on.update(*RESOURCE, registry=registry, id="reconcile")  # type: ignore[arg-type,unused-ignore]
    async def reconcile(
        body: kopf.Body,
        meta: kopf.Meta,
        namespace: str | None,
        patch: kopf.Patch,
        logger: kopf.Logger,
        valid_policies: kopf.Index[str, models.RBACPolicy],
        **_: Any,
    ) -> None:
        assert namespace is not None  # RBACPolicy is namespaced
        patch.status["observedGeneration"] = meta.get("generation")
        try:
            policy = compiling.validate(body)
        except ValidationError as exc:
            message = describe(exc)
            patch.status["conditions"] = [condition(False, "Invalid", message)]
            kopf.warn(body, reason="Invalid", message=message)  # a Kubernetes Event
            state.metrics.reconciles.labels(metrics.INVALID).inc()
            return  # the bundle stays as it was: compiled from the valid policies only
        with metrics.failures(state.metrics.reconciles):  # kopf retries
            bundle_hash = await compiling.write_bundle(
                state, namespace, valid_policies.get(namespace, []), logger
            )
        state.metrics.reconciles.labels(metrics.COMPILED).inc()
        patch.status["ruleCount"] = len(policy.spec.rules)
        patch.status["conditions"] = [condition(True, "Compiled", f"in bundle {bundle_hash}")]

    @kopf.on.delete(*RESOURCE, registry=registry, id="removed")  # type: ignore[arg-type]
    async def removed(
        name: str,
        namespace: str | None,
        logger: kopf.Logger,
        valid_policies: kopf.Index[str, models.RBACPolicy],
        **_: Any,
    ) -> None:
        assert namespace is not None  # RBACPolicy is namespaced
        # The index still holds the policy while its finalizer runs; leave it out. With no
        # policy left, the namespace gets the deny-all bundle.
        remaining = [p for p in valid_policies.get(namespace, []) if p.metadata.name != name]
        await compiling.write_bundle(state, namespace, remaining, logger)
