"""The periodic upkeep of each served namespace, on a timer per RBACPolicy (the policies
carry the operator's finalizer already): rotate the namespace's admin token when due, drop
the ``.previous`` credentials and tokens whose overlap is over, and check the namespace's
signed bundle (a Secret edited or deleted while the operator was not watching is rewritten).
Every step is idempotent and writes only on change, so several policies in one namespace
cost reads, not writes."""

from __future__ import annotations

from typing import Any

import kopf

from sidegate.operator.handlers import admin_tokens, compiling, credentials
from sidegate.operator.state import RESOURCE, OperatorState
from sidegate.policy import models


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    # kopf's handler protocols cannot name index kwargs (valid_policies) for mypy.
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
        valid_policies: kopf.Index[str, models.RBACPolicy],
        **_: Any,
    ) -> None:
        assert namespace is not None  # RBACPolicy is namespaced
        await admin_tokens.ensure(state, namespace, logger)
        await credentials.fan_out(state, logger)
        await compiling.write_bundle(state, namespace, valid_policies.get(namespace, []), logger)
