"""The mutating admission webhook: pods annotated ``sidegate.io/inject: "true"`` get the
sidecar (``injection.inject``). kopf serves it over TLS and turns the changed fields into
the JSON patch; unchanged fields (a pod injected already) give an empty patch."""

from __future__ import annotations

from typing import Any

import kopf

from sidegate.operator import injection, objects
from sidegate.operator.state import OperatorState

HANDLER_ID = "inject"  # the URL path: https://<service>/inject


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
        annotations={injection.ANNOTATION: kopf.PRESENT},
    )
    def inject(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        if not injection.wants_injection(body.metadata.annotations):
            return  # "false", or any value but "true": opted out explicitly
        pod = objects.plain(body)
        reason = injection.refusal(pod)
        if reason is not None:
            raise kopf.AdmissionError(reason, code=400)  # refused, not created without it
        changes = injection.inject(pod, spec)
        for section, fields in changes.items():
            patch.setdefault(section, {}).update(fields)
        logger.debug("sidecar injected (%s)", "native" if spec.native else "container")
