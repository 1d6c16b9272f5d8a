"""A namespace's valid policies → its signed bundle (``publishing.py``), from kopf's index
of valid policies, settled against the API server where that index cannot be right."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from sidegate.operator import objects
from sidegate.operator.handlers import publishing
from sidegate.operator.state import RESOURCE, OperatorState
from sidegate.policy import bundle, models


def validate(body: Mapping[str, Any]) -> models.RBACPolicy:
    return models.RBACPolicy.model_validate(objects.plain(body))


async def in_force(
    state: OperatorState, namespace: str, indexed: Iterable[models.RBACPolicy]
) -> list[models.RBACPolicy]:
    """The namespace's valid policies as kopf's index holds them, with any name held twice
    settled by reading the object itself. kopf keys its index by uid and drops an entry on
    the object's DELETED event; when it skips that event (it drops the events of an object
    it throttles after an API error), a policy deleted and created again under its name is
    held twice, and compiling would fail on every try until the operator restarts."""
    found: dict[str, list[models.RBACPolicy]] = {}
    for policy in indexed:
        found.setdefault(policy.metadata.name, []).append(policy)
    policies = [held[0] for held in found.values() if len(held) == 1]
    for name in sorted(name for name, held in found.items() if len(held) > 1):
        live = await state.api().read(policy_path(namespace, name))
        if live is None or (live.get("metadata") or {}).get("deletionTimestamp"):
            continue  # gone (or going): neither copy applies
        try:
            policies.append(validate(live))
        except ValidationError:
            continue  # invalid now: it never reaches a bundle
    return policies


def policy_path(namespace: str, name: str) -> str:
    group, version, plural = RESOURCE
    return f"/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}"


async def write_bundle(
    state: OperatorState, namespace: str, policies: Iterable[models.RBACPolicy], logger: kopf.Logger
) -> str:
    """No policies give the deny-all bundle, never a stale allow."""
    settled = await in_force(state, namespace, policies)
    return await publishing.publish(state, namespace, bundle.to_bundle(settled), logger)
