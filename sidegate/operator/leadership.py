"""Which operator replica leads: kopf's peering, used as leader election.

kopf's peering is a ``ClusterKopfPeering`` object whose status lists every running operator
with its priority and a keep-alive (``lastseen`` + ``lifetime``). An operator that sees a live
peer with a higher priority pauses all its watching and handling; one that sees a live peer
with the *same* priority pauses too (kopf cannot tell which should work), so every replica
gets a priority of its own: the earlier a replica started, the higher, so the replica in
charge keeps leading while newer ones (a rolling update's surge pod) stand by. A replica that
stops cleanly removes itself at once; one that dies stops counting when its keep-alive
expires (``lifetime`` seconds), and the next oldest resumes.

kopf pauses only what it runs (RBACPolicy handlers, timers). The operator's own watch of the
release namespace (``handlers/release.py``) writes too, so ``follow`` reads the same peering
object with the same rule and runs that watch only while this replica leads. The two views
can differ for one poll interval at a hand-over; every write is a resourceVersion-checked
read-modify-write or an idempotent create, so an overlap costs a 409, never a lost update.

The admission webhook is not paused by kopf and needs no leader: it only reads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import secrets
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp
import kopf

from sidegate.operator.handlers import release

if TYPE_CHECKING:
    from sidegate.operator.state import OperatorState

logger = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "kopf.dev", "v1", "clusterkopfpeerings"
_TIE_BREAK = 1000  # random low digits: two replicas started in one millisecond still differ


@dataclasses.dataclass(frozen=True)
class Peering:
    """This replica's entry in the peering object ``name``."""

    name: str
    identity: str
    priority: int
    lifetime: int = 60  # seconds a keep-alive counts: how long a dead leader blocks the rest

    @property
    def path(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/{PLURAL}/{self.name}"

    @property
    def poll_seconds(self) -> float:
        return min(10.0, max(1.0, self.lifetime / 6))


def priority(started: float) -> int:
    """Earlier start, higher priority (kopf's priorities are plain integers)."""
    return -(int(started * 1000) * _TIE_BREAK + secrets.randbelow(_TIE_BREAK))


def identity(pod_name: str | None) -> str:
    """The pod's name in a cluster (as kopf's own POD_ID), else a random one."""
    return pod_name or f"sidegate-{secrets.token_hex(4)}"


def alive(entry: Mapping[str, Any], now: datetime.datetime) -> bool:
    try:
        seen = datetime.datetime.fromisoformat(str(entry["lastseen"]))
        lifetime = float(entry.get("lifetime", 60))
    except (KeyError, TypeError, ValueError):
        return False
    if seen.tzinfo is None:
        seen = seen.replace(tzinfo=datetime.UTC)
    return seen + datetime.timedelta(seconds=lifetime) > now


def leads(status: Mapping[str, Any], me: Peering, now: datetime.datetime) -> bool:
    """kopf's rule, from this replica's side: it has announced itself, and no live peer has
    its priority or a higher one."""
    entries = {peer: entry for peer, entry in status.items() if isinstance(entry, Mapping)}
    if me.identity not in entries or not alive(entries[me.identity], now):
        return False  # not announced yet (kopf still waits), or gone stale
    for peer, entry in entries.items():
        if peer != me.identity and alive(entry, now):
            try:
                if int(entry.get("priority", 0)) >= me.priority:
                    return False
            except (TypeError, ValueError):
                return False
    return True


async def follow(state: OperatorState, me: Peering) -> None:
    """Run the release namespace watch exactly while this replica leads."""
    leading = False
    try:
        while True:
            try:
                found = await state.api().read(me.path)
                now_leading = found is not None and leads(
                    found.get("status") or {}, me, datetime.datetime.now(datetime.UTC)
                )
            # An API server restart is a connection error, not an HTTP one: the loop must
            # outlive it, or the leader stops its watch and kopf never hands over.
            except (kopf.TemporaryError, aiohttp.ClientError, TimeoutError) as exc:
                logger.warning("peering %s unreadable: %s", me.name, exc)
                now_leading = leading  # unknown: keep what was decided
            if now_leading and not leading:
                logger.info("leading (peering %s, as %s)", me.name, me.identity)
                release.start(state)
            elif leading and not now_leading:
                logger.info("standing by (peering %s, as %s)", me.name, me.identity)
                await release.stop(state)
            leading = now_leading
            await asyncio.sleep(me.poll_seconds)
    finally:
        await release.stop(state)


def start(state: OperatorState, me: Peering) -> None:
    """Run ``follow`` in the background once per process (kopf may log in again)."""
    if state.leadership is not None and not state.leadership.done():
        return
    task = asyncio.get_running_loop().create_task(follow(state, me), name="sidegate-leadership")
    task.add_done_callback(_report)
    state.leadership = task


async def stop(state: OperatorState) -> None:
    task, state.leadership = state.leadership, None
    if task is None:
        return
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _report(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("leadership watch stopped", exc_info=task.exception())
