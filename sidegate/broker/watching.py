"""Keeping ``Contents`` equal to the release namespace: list, then watch from the list's
resourceVersion; when the watch ends (the server's timeout) watch again from the last version
seen; on an error (410 Gone included) list again after a backoff with jitter."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from sidegate.broker import contents, kube

logger = logging.getLogger(__name__)

_WATCH_SECONDS = 300
_MAX_BACKOFF = 30.0


async def keep_in_sync(
    client: kube.Client, namespace: str, kind: str, into: contents.Contents
) -> None:
    """Runs until cancelled. Anything but an API error ends it, logged: the probe port's
    /healthz then fails and the kubelet restarts the replica."""
    try:
        await _keep_in_sync(client, namespace, kind, into)
    except Exception:
        logger.exception("the %s watch stopped", kind, extra={"namespace": namespace})
        raise


async def _keep_in_sync(
    client: kube.Client, namespace: str, kind: str, into: contents.Contents
) -> None:
    failures = 0
    while True:
        try:
            listed = await client.list_objects(namespace, kind)
            into.replace(kind, listed.get("items") or [])
            version = str((listed.get("metadata") or {}).get("resourceVersion") or "")
            failures = 0
            while True:
                version = await _watch_once(client, namespace, kind, version, into)
        except kube.ApiError as exc:
            failures += 1
            # Jitter, not a secret: the standard generator is right here.
            jitter = random.uniform(0.5, 1)  # noqa: S311  # nosec B311
            delay = min(_MAX_BACKOFF, 0.5 * 2 ** min(failures, 8)) * jitter
            logger.warning(
                "cannot read %s; retrying",
                kind,
                extra={"namespace": namespace, "reason": str(exc), "retry_in": round(delay, 2)},
            )
            await asyncio.sleep(delay)


async def _watch_once(
    client: kube.Client, namespace: str, kind: str, version: str, into: contents.Contents
) -> str:
    async for event in client.watch(namespace, kind, version, _WATCH_SECONDS):
        obj: Any = event.get("object") or {}
        kind_of_event = str(event.get("type"))
        if kind_of_event == "ERROR":  # e.g. 410 Gone: the version is too old; list again
            raise kube.ApiError(f"watch {kind}: {obj.get('reason', 'error')}", obj.get("code", 0))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        into.apply(kind, kind_of_event, obj)
    return version
