"""The Secrets of the release namespace, watched by the operator itself.

Not by kopf: kopf watches each resource in one scope for all the namespaces it serves, so
watching Secrets through it means reading Secrets in every served namespace (or the whole
cluster). The operator may read Secrets in its own namespace only (a Role), whatever
``--namespace`` limits RBACPolicies to; this one list-and-watch is all it needs:

- a labelled source Secret changed → the credentials Secret follows (``credentials.py``);
- ``sidegate-signing`` changed → the keys are reloaded, re-published, and every bundle is
  re-signed when the active key changed (``publishing.py``);
- a ``sidegate-bundle-<ns>`` changed → it is verified and restored if it was altered.

The operator's own writes come back as events too; each step reads, compares and writes only
on change, so they cost a read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import kopf

from sidegate.operator import bundles, fanout, signing_keys
from sidegate.operator.handlers import credentials, publishing, webhook_certificates
from sidegate.operator.kube import SECRETS, WatchExpired
from sidegate.operator.state import OperatorState
from sidegate.policy import signing

logger = logging.getLogger(__name__)
_RETRY_SECONDS = (1.0, 30.0)  # first and longest wait before listing again after a failure


async def follow(state: OperatorState) -> None:
    """List, then watch, for as long as the operator runs; list again after a gap (the
    events missed in it are in the new list).

    Each list and each watch resume takes the client the latest login made: kopf logs in
    again on a 401 (an expired or rotated token) and the login closes the previous client,
    which ends this watch with a connection error; it then lists again at once, on the new
    client, with no back-off (nothing is wrong with the API server)."""
    path = f"/api/v1/namespaces/{state.namespace}/{SECRETS}"
    delay = _RETRY_SECONDS[0]
    while True:
        client = state.client
        try:
            client = state.api()
            items, version = await client.list(path)
            # The signing keys exist (made on the first start) and their public halves are
            # published before anything else: the webhook injects them.
            await publishing.keys(state)
            await synchronise(state, items)
            delay = _RETRY_SECONDS[0]
            while True:  # the server ends each watch after a while: resume where it stopped
                client = state.api()
                async for kind, obj in client.watch(state.namespace, SECRETS, version):
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        await on_event(state, kind, obj)
        except WatchExpired:
            continue
        except (aiohttp.ClientError, TimeoutError, kopf.TemporaryError) as exc:
            if client is not None and state.client is not client:
                logger.info("release namespace watch: logged in again; listing again")
                continue
            logger.warning("release namespace watch: %s; listing again in %.0fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_SECONDS[1])
        except Exception:
            # Anything else is a bug, or an object no one foresaw; ending here would stop the
            # fan-out, the restores and the key reloads for good while this replica still
            # leads. Said loudly, then listed again.
            logger.exception("release namespace watch failed; listing again in %.0fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_SECONDS[1])


async def synchronise(state: OperatorState, items: list[dict[str, Any]]) -> None:
    """A full list: the sources are exactly the labelled Secrets in it."""
    sources: dict[str, dict[str, str]] = {}
    for item in items:
        if _is_source(state, item):
            kept = _source_values(state, item)
            if kept is not None:
                sources[_name(item)] = kept
    state.sources = sources
    state.sources_listed = True
    await credentials.fan_out(state, logger)
    for item in items:
        if not _is_source(state, item):
            await on_event(state, "ADDED", item)


async def on_event(state: OperatorState, kind: str, obj: dict[str, Any]) -> None:
    name = _name(obj)
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if _is_source(state, obj) or name in state.sources:
        if kind == "DELETED" or not _is_source(state, obj):
            state.sources.pop(name, None)  # deleted, or no longer labelled as a source
        else:
            kept = _source_values(state, obj)
            if kept is None:
                state.sources.pop(name, None)
            else:
                state.sources[name] = kept
        await credentials.fan_out(state, logger)
    elif name == signing_keys.SECRET:
        if kind == "DELETED":
            await _restore_signing_secret(state)
        elif await publishing.load_keys(state):
            await publishing.resign(state)
    elif (served := labels.get(bundles.FOR_LABEL)) and name == bundles.secret_name(served):
        await publishing.restore(state, served)


async def _restore_signing_secret(state: OperatorState) -> None:
    """Deleted by hand: put back the key in force (a new key would make every running
    sidecar refuse the next bundle). Other inactive keys, if any, are gone with it."""
    if state.keys is None:
        return
    pem = signing.private_key_to_pem(state.keys.active).decode()
    data = {state.keys.active_name: pem, signing_keys.ACTIVE: state.keys.active_name}
    if not await state.api().create(signing_keys.secret(state.namespace, data)):
        return  # put back already (another replica)
    logger.warning(
        "signing Secret %s/%s was deleted: restored", state.namespace, signing_keys.SECRET
    )


def _source_values(state: OperatorState, obj: dict[str, Any]) -> dict[str, str] | None:
    """A source Secret's keys; when one of its values is not text, what was in force for it
    (a malformed new value keeps the old one), None if nothing was."""
    name = _name(obj)
    broken = fanout.undecodable(obj)
    if not broken:
        return fanout.decode(obj)
    logger.error(
        "source Secret %s: %s not base64 of UTF-8 text; its keys in force are kept",
        name,
        ", ".join(broken),
    )
    return state.sources.get(name)


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def _is_source(state: OperatorState, obj: dict[str, Any]) -> bool:
    label, value = state.source_label
    return ((obj.get("metadata") or {}).get("labels") or {}).get(label) == value


def start(state: OperatorState) -> None:
    """Run ``follow`` in the background once per process (kopf may log in again), and the
    webhook certificates' upkeep beside it when the operator keeps them: what the leader
    does besides kopf's handlers."""
    loop = asyncio.get_running_loop()
    # What leading means here: this watch runs (and kopf handles). Read at each scrape, so a
    # watch that ended shows as not leading.
    state.metrics.leader.set_function(lambda: float(_watching(state)))
    if state.release_watch is None or state.release_watch.done():
        task = loop.create_task(follow(state), name="sidegate-release-watch")
        task.add_done_callback(_report)
        state.release_watch = task
    wanted = state.webhook_certificates
    if wanted is not None and (state.certificates_task is None or state.certificates_task.done()):
        kept = loop.create_task(
            webhook_certificates.keep(state, wanted), name="sidegate-webhook-certificates"
        )
        kept.add_done_callback(_report)
        state.certificates_task = kept


def _watching(state: OperatorState) -> bool:
    return state.release_watch is not None and not state.release_watch.done()


async def stop(state: OperatorState) -> None:
    tasks = [t for t in (state.release_watch, state.certificates_task) if t is not None]
    state.release_watch = state.certificates_task = None
    for task in tasks:
        task.cancel()
    # Whatever they ended with was logged by _report; shutting down must not fail on it.
    await asyncio.gather(*tasks, return_exceptions=True)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("%s stopped", task.get_name(), exc_info=task.exception())
