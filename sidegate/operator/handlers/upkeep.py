"""The periodic upkeep of each served namespace, on a timer per RBACPolicy (the policies
carry the operator's finalizer already): rotate the admin token when due, and drop the
``.previous`` credentials and tokens whose overlap is over. It also repairs a Secret edited
or deleted by hand. Every step is idempotent and writes only on change, so several policies
in one namespace cost reads, not writes."""

from __future__ import annotations

from typing import Any

import kopf

from sidegate.operator.handlers import admin_tokens, credentials
from sidegate.operator.state import RESOURCE, OperatorState


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    # kopf's handler protocols cannot name index kwargs (credential_sources) for mypy.
    @kopf.timer(  # type: ignore[arg-type]
        *RESOURCE,
        registry=registry,
        id="namespace-upkeep",
        interval=state.upkeep_interval,
        initial_delay=0,
    )
    async def namespace_upkeep(
        namespace: str | None,
        logger: kopf.Logger,
        credential_sources: kopf.Index[str, credentials.Source],
        **_: Any,
    ) -> None:
        assert namespace is not None  # RBACPolicy is namespaced
        await admin_tokens.ensure(state, namespace, logger)
        await credentials.fan_out(state, [namespace], credential_sources, logger)
