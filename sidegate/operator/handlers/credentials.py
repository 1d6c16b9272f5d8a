"""Provider credentials: labelled source Secrets in the operator's namespace → the
``sidegate-credentials`` Secret of every namespace that has policies, with ``.previous``
kept for the overlap window after a rotation (``fanout.py``). External Secrets or Vault
may keep the sources up to date; the operator follows within seconds. No value is ever
logged, put in an Event or in a status."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import kopf

from sidegate.operator import fanout
from sidegate.operator.state import OperatorState

SOURCES = "credential_sources"


Source = tuple[str, dict[str, str]]  # (Secret name, decoded data)


def merged(sources: kopf.Index[str, Source]) -> dict[str, str]:
    """Every source's keys; sources are applied in name order, so the last name wins."""
    found: dict[str, str] = {}
    everything: list[Source] = [item for store in sources.values() for item in store]
    for _name, data in sorted(everything, key=lambda item: item[0]):
        found.update(data)
    return found


async def fan_out(
    state: OperatorState,
    namespaces: Iterable[str],
    sources: kopf.Index[str, Source],
    logger: kopf.Logger,
) -> None:
    """Bring each namespace's credentials Secret up to the sources: new keys in, rotated
    ones kept as ``.previous`` until their overlap ends, then out. Writes only on change."""
    if state.client is None:
        raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
    wanted = merged(sources)
    if not wanted:
        return
    for namespace in sorted(set(namespaces)):
        async with state.lock(namespace):
            secret = await state.client.get(namespace, state.credentials_secret)
            written = await fanout.converge(
                state.client,
                secret,
                namespace,
                state.credentials_secret,
                wanted,
                now=time.time(),
                overlap=state.overlap,
            )
        if written is not None:
            logger.info(
                "credentials %s/%s written: %d keys, %d in overlap",  # counts, never values
                namespace,
                state.credentials_secret,
                len(wanted),
                len(written),
            )


def register(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    label, value = state.source_label

    @kopf.index("v1", "secrets", labels={label: value}, registry=registry, id=SOURCES)
    def credential_sources(
        namespace: str | None, name: str, body: kopf.Body, **_: Any
    ) -> dict[str, Source] | None:
        if namespace != state.namespace:
            return None  # only the operator's own namespace is trusted as a source
        return {"sources": (name, fanout.decode(body))}

    # A change at a source fans out at once. An event handler, not a timer: kopf puts a
    # finalizer on whatever a timer runs for, and the source Secrets are not ours to hold
    # (External Secrets may own them). Expiring `.previous` is the namespace upkeep timer's.
    # kopf's handler protocols cannot name index kwargs (credential_sources) for mypy.
    @kopf.on.event(  # type: ignore[arg-type]
        "v1", "secrets", labels={label: value}, registry=registry, id="follow-sources"
    )
    async def follow_sources(
        logger: kopf.Logger,
        valid_policies: kopf.Index[str, Any],
        credential_sources: kopf.Index[str, Source],
        **_: Any,
    ) -> None:
        await fan_out(state, valid_policies.keys(), credential_sources, logger)
