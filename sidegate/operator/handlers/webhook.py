"""The admission webhooks (kopf serves them over TLS; the chart registers them).

``/inject`` (mutating): pods labelled ``sidegate.io/inject: "true"`` get the sidecar
(``injection.inject``), with the signing keys in force and the broker's CA in its config;
a pod that would expose the sidecar is refused rather than created without it.

``/guard`` (validating, after every mutation):
- pod CREATE: a pod with anything of Sidegate's in it is refused when another container could
  reach the sidecar's token, memory or port (``injection.exposure``), whoever put it there,
  and when its ``sidegate`` container is not the injector's (``injection.hand_made``: a
  hand-made sidecar with a hook, a probe or a config of its author's);
- pod UPDATE: no change to the ``sidegate`` container or its volumes (``injection.
  changed_sidecar``: a container's image may be updated on a running pod);
- pods/ephemeralcontainers UPDATE: the same rules on the pod as it would become, so no
  ephemeral container targets the sidecar or mounts its volumes;
- pods/exec CONNECT: no exec into the sidecar container (its memory holds the provider keys).
``kubectl port-forward`` and ``attach`` are not refused: port-forward reaches the sidecar's
API as the app does (the policy applies), attach sees its log output (no secrets in it).

Each answer is counted by outcome (``counted``; ``metrics.py``): allowed, patched, refused
(4xx) or error (5xx).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import kopf

from sidegate.operator import injection, metrics, objects, signing_keys
from sidegate.operator.kube import CONFIG_MAPS
from sidegate.operator.state import OperatorState

HANDLER_ID = "inject"  # the URL path: https://<service>/inject
GUARD_ID = "guard"  # https://<service>/guard


async def current_spec(state: OperatorState, spec: injection.SidecarSpec) -> injection.SidecarSpec:
    """The spec with what changes while the operator runs: the trusted keys (rotation: read
    from the public ConfigMap the leading operator publishes, so every webhook replica, led
    or not, injects the same keys and none needs the private ones) and the broker's CA
    (read each time: cert-manager may renew it)."""
    found = await state.api().get(state.namespace, signing_keys.PUBLIC, CONFIG_MAPS)
    try:
        trusted = signing_keys.published(found)
    except ValueError as exc:
        raise kopf.AdmissionError(
            f"sidegate: no signing keys published yet ({exc}); try again shortly", code=503
        ) from None
    ca = _read(state.broker_ca_file) if state.broker_ca_file is not None else None
    return dataclasses.replace(spec, trusted_keys=trusted, broker_ca_pem=ca)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise kopf.AdmissionError(
            f"sidegate: the broker's CA is not readable ({exc.strerror})", code=500
        ) from None


async def counted(state: OperatorState, webhook_id: str, answer: Coroutine[Any, Any, str]) -> None:
    """Await a webhook's answer and count it: its outcome, or refused (a 4xx AdmissionError)
    or error (a 5xx one, or any other exception, which kopf answers as a failure)."""
    try:
        outcome = await answer
    except kopf.AdmissionError as exc:
        outcome = metrics.REFUSED if exc.code is not None and exc.code < 500 else metrics.ERROR
        state.metrics.admission_reviews.labels(webhook_id, outcome).inc()
        raise
    except Exception:
        state.metrics.admission_reviews.labels(webhook_id, metrics.ERROR).inc()
        raise
    state.metrics.admission_reviews.labels(webhook_id, outcome).inc()


def register_client(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    """The API client of a webhook-only process (``--webhook-only``): made at login, closed
    at exit. It reads the published signing keys, nothing else (no watch, no writes)."""

    @kopf.on.login(registry=registry, id="login")
    async def login(
        **kwargs: Any,
    ) -> kopf.ConnectionInfo | None:  # async: the client needs the loop
        info = state.login(**kwargs)
        if info is not None:
            await state.use_client(info)  # an admission review never reads through a closing one
        return info

    @kopf.on.cleanup(registry=registry, id="close")
    async def close(**_: Any) -> None:
        if state.client is not None:
            await state.client.close()


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    spec = state.sidecar
    if spec is None:
        return

    @kopf.on.mutate(
        "v1",
        "pods",
        registry=registry,
        id=HANDLER_ID,
        operations={"CREATE"},
        labels={injection.LABEL: kopf.PRESENT},
    )
    async def inject(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        await counted(state, HANDLER_ID, injected(body, patch, logger))

    async def injected(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger) -> str:
        pod = objects.plain(body)
        if not injection.wants_injection(pod.get("metadata", {}).get("labels")):
            return metrics.ALLOWED  # "false", or any value but "true": opted out explicitly
        try:
            changes = injection.admit(pod, await current_spec(state, spec))
        except injection.Refused as exc:
            raise kopf.AdmissionError(str(exc), code=400) from None  # not created without it
        if changes is None:
            return metrics.ALLOWED
        for section, fields in changes.items():
            patch.setdefault(section, {}).update(fields)
        logger.debug("sidecar injected (%s)", "native" if spec.native else "container")
        return metrics.PATCHED

    @kopf.on.validate(
        "v1",
        "pods",
        registry=registry,
        id=GUARD_ID,
        operations={"CREATE", "UPDATE", "CONNECT"},
        subresource="*",
    )
    async def guard(body: kopf.Body, subresource: str | None, **kwargs: Any) -> None:
        await counted(state, GUARD_ID, guarded(body, subresource, **kwargs))

    async def guarded(body: kopf.Body, subresource: str | None, **kwargs: Any) -> str:
        """Allowed, or refused by an AdmissionError."""
        operation = kwargs.get("operation")  # not in kopf's WebhookFn protocol, but passed
        if subresource == "exec" and operation == "CONNECT":
            # The object is the PodExecOptions: which container, which command.
            if body.get("container") == injection.CONTAINER:
                raise kopf.AdmissionError(
                    "sidegate: exec into the sidecar container is refused (it holds the "
                    "provider keys in memory)",
                    code=403,
                )
            return metrics.ALLOWED
        if subresource not in (None, "ephemeralcontainers"):
            return metrics.ALLOWED  # status, binding, attach, portforward...
        if subresource == "ephemeralcontainers" and operation != "UPDATE":
            return metrics.ALLOWED
        pod = objects.plain(body)
        old = kwargs.get("old")
        if operation == "UPDATE" and old is not None:
            reason = injection.changed_sidecar(objects.plain(old), pod)
            if reason is not None:
                raise kopf.AdmissionError(f"sidegate: {reason}", code=403)
        if not injection.carries_sidegate(pod, spec.audience):
            return metrics.ALLOWED
        reason = injection.exposure(pod, spec.audience)
        if reason is None and operation == "CREATE":
            # Against the spec in force now: the mutating webhook has just injected with it.
            reason = injection.hand_made(pod, await current_spec(state, spec))
        if reason is not None:
            raise kopf.AdmissionError(f"sidegate: {reason}", code=403)
        return metrics.ALLOWED
