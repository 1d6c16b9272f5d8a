"""Provider credentials: the labelled source Secrets of the release namespace → the ONE
``sidegate-credentials`` Secret there, with ``.previous`` kept for the overlap window after a
rotation (``fanout.py``). The broker serves it to the sidecars of every served namespace; no
copy goes to an application namespace. External Secrets or Vault may keep the sources up to
date; the release watch (``release.py``) follows them within a second. No value is ever
logged, put in an Event or in a status."""

from __future__ import annotations

import time
from collections.abc import Mapping

import kopf

from sidegate.operator import fanout, metrics
from sidegate.operator.state import CREDENTIALS_SECRET, OperatorState


def merged(sources: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Every source's keys; sources are applied in name order, so the last name wins."""
    found: dict[str, str] = {}
    for _name, data in sorted(sources.items()):
        found.update(data)
    return found


async def fan_out(state: OperatorState, logger: kopf.Logger) -> None:
    """Bring the credentials Secret up to the sources: new keys in, rotated ones kept as
    ``.previous`` until their overlap ends, then out. Writes only on change; nothing before
    the sources were first listed, nor when there are none (never wipe the keys in force)."""
    wanted = merged(state.sources)
    if not state.sources_listed or not wanted:
        return
    counted = state.metrics.credentials
    with metrics.failures(counted, metrics.PROVIDER_KEYS):
        client = state.api()
        async with state.lock(CREDENTIALS_SECRET):
            secret = await client.get(state.namespace, CREDENTIALS_SECRET)
            written = await fanout.converge(
                client,
                secret,
                state.namespace,
                CREDENTIALS_SECRET,
                wanted,
                now=time.time(),
                overlap=state.overlap,
            )
    outcome = metrics.UNCHANGED if written is None else metrics.WRITTEN
    counted.labels(metrics.PROVIDER_KEYS, outcome).inc()
    if written is not None:
        logger.info(
            "credentials %s/%s written: %d keys, %d in overlap",  # counts, never values
            state.namespace,
            CREDENTIALS_SECRET,
            len(wanted),
            len(written),
        )
