"""The durable local spool: append-only JSONL segments, group commit, crash recovery.

Events wait in memory for ``flush_interval`` (a few milliseconds), then the whole batch is
chained, written and fsync'd in one go: only then is an event written (acknowledged). A
request never waits for that; it only asks, before it starts, whether the spool is
accepting (fail-closed refuses requests while it is full or unwritable).

Layout under the spool directory::

    active/<first event id>.jsonl    the segment being written (one at a time)
    sealed/<first event id>.jsonl    closed segments, waiting for the exporter
    tail.json                        hash and id of the last sealed event (chain continuity
                                     across restarts, even after every segment was uploaded)

Segments are sealed when they reach ``segment_max_bytes`` or ``segment_max_age``. At start,
a torn last line (a crash in the middle of a write; never acknowledged) is cut off and
counted, leftover active segments are sealed, and the chain goes on with an
``audit.restart`` event whose ``prev_hash`` is the last good hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidegate.audit import events
from sidegate.audit.metrics import AuditMetrics

logger = logging.getLogger(__name__)

_MAX_PENDING = 100_000  # events waiting in memory; past it they are dropped (and counted)
_PROBE_INTERVAL = 1.0  # seconds between retries of an unwritable spool


@dataclasses.dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod: str


class Spool:
    def __init__(
        self,
        directory: Path,
        identity: Identity,
        metrics: AuditMetrics,
        *,
        max_bytes: int,
        segment_max_bytes: int,
        segment_max_age: float,
        flush_interval: float,
        fail_open: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.active_dir = directory / "active"
        self.sealed_dir = directory / "sealed"
        self._tail_file = directory / "tail.json"
        self._identity = identity
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._segment_max_bytes = segment_max_bytes
        self._segment_max_age = segment_max_age
        self._flush_interval = flush_interval
        self.fail_open = fail_open
        self._clock = clock
        self._ulids = events.Ulids()
        self._pending: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self.sealed = asyncio.Event()  # set whenever a segment is sealed
        self._loop: asyncio.AbstractEventLoop | None = None
        self._size_lock = threading.Lock()
        # One batch at a time touches the segment and the chain, whichever thread runs it:
        # a cancelled writer's thread may still be finishing when close() starts its own.
        self._write_lock = threading.Lock()
        self._stopping = False
        self._spool_bytes = 0
        # Writer state, touched only by one batch at a time:
        self._last_hash = events.GENESIS
        self._segment: Path | None = None
        self._segment_fd: int | None = None
        self._segment_bytes = 0
        self._segment_opened = 0.0
        self.healthy = True
        self._problem = ""
        self._last_drop_log = 0.0

    @property
    def metrics(self) -> AuditMetrics:
        return self._metrics

    # -- the request path ---------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether new LLM requests may be served (fail-closed: only while healthy)."""
        return self.healthy or self.fail_open

    def emit(self, record: dict[str, Any]) -> None:
        """Queue an event (without id, timestamp or hashes). Cheap: no I/O, no encoding."""
        if len(self._pending) >= _MAX_PENDING:
            self._drop(1, "too many events waiting for the spool")
            return
        record.setdefault("at", self._clock())
        self._pending.append(record)
        if not self._wake.is_set():
            self._wake.set()

    # -- start-up -----------------------------------------------------------------------

    def open(self) -> None:
        """Recover from whatever the last run left, then chain on with a restart event."""
        self.active_dir.mkdir(parents=True, exist_ok=True)
        self.sealed_dir.mkdir(parents=True, exist_ok=True)
        torn = 0
        last_id, last_hash = self._read_tail()
        for segment in sorted(self.active_dir.glob("*.jsonl")):
            dropped = _cut_torn_tail(segment)
            torn += dropped
            if segment.stat().st_size == 0:
                segment.unlink()
                continue
            os.replace(segment, self.sealed_dir / segment.name)
        _fsync_directory(self.sealed_dir)
        for segment in sorted(self.sealed_dir.glob("*.jsonl")):
            found = _last_event(segment)
            if found is not None and found[0] > last_id:
                last_id, last_hash = found
        if torn:
            self._metrics.torn_lines.inc(torn)
            logger.warning("audit spool: dropped torn lines left by a crash", extra={"lines": torn})
        self._last_hash = last_hash
        self._spool_bytes = sum(p.stat().st_size for p in self._segments())
        self._metrics.spool_bytes.set(self._spool_bytes)
        self._metrics.spool_healthy.set(1)
        self._metrics.pending_segments.set(len(self.sealed_segments()))
        self.emit(
            self.system_event(
                "audit.restart",
                "ok",
                reason=f"torn_lines_dropped:{torn}" if torn else None,
            )
        )

    def _read_tail(self) -> tuple[str, str]:
        try:
            tail = json.loads(self._tail_file.read_text())
            return str(tail["id"]), str(tail["hash"])
        except (OSError, ValueError, KeyError, TypeError):
            return "", events.GENESIS

    def system_event(
        self,
        action: str,
        result: str,
        *,
        reason: str | None = None,
        resource: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            "actor": {
                "kind": "system",
                "namespace": self._identity.namespace,
                "service_account": self._identity.service_account,
                "pod": self._identity.pod,
                "tenant": None,
            },
            "action": action,
            "resource": resource or {},
            "outcome": {"result": result, "reason": reason},
        }

    # -- the writer ---------------------------------------------------------------------

    async def run(self) -> None:
        """Write batches until cancelled. One batch at a time, in a worker thread."""
        self._loop = asyncio.get_running_loop()
        while not self._stopping:
            timeout = self._next_deadline()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            await asyncio.sleep(self._flush_interval)  # let a group gather
            self._wake.clear()
            batch, self._pending = self._pending, []
            await asyncio.to_thread(self._write, batch)

    def _next_deadline(self) -> float | None:
        if not self.healthy:
            return _PROBE_INTERVAL
        if self._segment is not None:
            return max(0.0, self._segment_opened + self._segment_max_age - time.monotonic())
        return None

    async def close(self) -> None:
        """Write what is queued and seal the active segment (on shutdown)."""
        self._stopping = True
        batch, self._pending = self._pending, []
        await asyncio.to_thread(self._write, batch)
        await asyncio.to_thread(self._locked_seal)

    def _locked_seal(self) -> None:
        with self._write_lock:
            self._seal()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        with self._write_lock:
            self._write_locked(batch)

    def _write_locked(self, batch: list[dict[str, Any]]) -> None:
        if not self.healthy:
            self._probe()  # the only way back: it also seals what a failure left in active/
            if not self.healthy:
                if batch:
                    self._drop(len(batch), self._problem)
                return
        if self._segment is not None and (
            time.monotonic() - self._segment_opened >= self._segment_max_age
        ):
            self._seal()
        if not batch or not self.healthy:
            if batch:
                self._drop(len(batch), self._problem)
            return
        started = time.perf_counter()
        previous = self._last_hash
        lines = []
        first_id = ""
        for record in batch:
            at = record.pop("at")
            event = {
                "version": events.SCHEMA_VERSION,
                "id": self._ulids.new(at),
                "timestamp": events.rfc3339(at),
                **record,
                "prev_hash": previous,
            }
            line, previous = events.sealed_line(event)
            first_id = first_id or event["id"]
            lines.append(line)
        data = b"".join(lines)
        with self._size_lock:
            full = self._spool_bytes + len(data) > self._max_bytes
        if full:
            self._fail("full", len(batch))
            return
        try:
            fd = self._segment_fd if self._segment_fd is not None else self._open_segment(first_id)
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self._close_segment()
            self._fail(f"unwritable ({exc.strerror})", len(batch))
            return
        self._last_hash = previous  # the chain moves on only once the batch is on disk
        self._segment_bytes += len(data)
        with self._size_lock:
            self._spool_bytes += len(data)
            self._metrics.spool_bytes.set(self._spool_bytes)
        self._metrics.events.labels("written").inc(len(batch))
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        if self._segment_bytes >= self._segment_max_bytes:
            self._seal()

    def _open_segment(self, first_id: str) -> int:
        # Named after the first event it holds: segments sort in chain order.
        path = self.active_dir / f"{first_id}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        _fsync_directory(self.active_dir)
        self._segment, self._segment_fd = path, fd
        self._segment_bytes = 0
        self._segment_opened = time.monotonic()
        return fd

    def _close_segment(self) -> None:
        if self._segment_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._segment_fd)
        self._segment_fd = None

    def _seal(self) -> None:
        segment = self._segment
        self._close_segment()
        self._segment = None
        if segment is None:
            return
        try:
            if segment.stat().st_size == 0:
                segment.unlink()
                return
            target = self.sealed_dir / segment.name
            os.replace(segment, target)
            _fsync_directory(self.sealed_dir)
            found = _last_event(target)
            if found is not None:
                _write_atomically(self._tail_file, json.dumps({"id": found[0], "hash": found[1]}))
        except OSError as exc:
            self._fail(f"unwritable ({exc.strerror})", 0)
            return
        self._metrics.pending_segments.set(len(self.sealed_segments()))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.sealed.set)

    def _probe(self) -> None:
        """While unhealthy: can a segment be written again?"""
        try:
            probe = self.directory / ".probe"
            with open(probe, "wb") as handle:
                handle.write(b"x")
                handle.flush()
                os.fsync(handle.fileno())
            probe.unlink()
            (self.active_dir).mkdir(parents=True, exist_ok=True)
            (self.sealed_dir).mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        with self._size_lock:
            if self._spool_bytes >= self._max_bytes:
                return
        # A segment whose sealing failed is still in active/: seal it now, or its events
        # would wait for the next restart to be shipped.
        try:
            for orphan in sorted(self.active_dir.glob("*.jsonl")):
                os.replace(orphan, self.sealed_dir / orphan.name)
            _fsync_directory(self.sealed_dir)
        except OSError:
            return
        self.healthy = True
        self._metrics.spool_healthy.set(1)
        self._metrics.pending_segments.set(len(self.sealed_segments()))
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.sealed.set)
        logger.info("audit spool writable again")

    def _fail(self, problem: str, lost: int) -> None:
        if self.healthy or problem != self._problem:
            logger.error(
                "audit spool %s: %s",
                problem,
                "serving and dropping events (fail-open)"
                if self.fail_open
                else "refusing LLM requests (fail-closed)",
            )
        self.healthy = False
        self._problem = problem
        self._metrics.spool_healthy.set(0)
        if lost:
            self._drop(lost, problem)

    def _drop(self, count: int, why: str) -> None:
        self._metrics.events.labels("dropped").inc(count)
        now = time.monotonic()
        if now - self._last_drop_log > 5:
            self._last_drop_log = now
            logger.error("audit events dropped", extra={"events": count, "reason": why})

    # -- the exporter's side ------------------------------------------------------------

    def _segments(self) -> list[Path]:
        return sorted([*self.active_dir.glob("*.jsonl"), *self.sealed_dir.glob("*.jsonl")])

    def sealed_segments(self) -> list[Path]:
        return sorted(self.sealed_dir.glob("*.jsonl"))

    def release(self, segment: Path) -> None:
        """The exporter confirmed the segment: delete it and give its bytes back."""
        size = segment.stat().st_size
        segment.unlink()
        with self._size_lock:
            self._spool_bytes = max(0, self._spool_bytes - size)
            self._metrics.spool_bytes.set(self._spool_bytes)
        self._metrics.pending_segments.set(len(self.sealed_segments()))
        if not self.healthy and self._problem == "full":
            self._wake.set()  # the writer's probe may find room now

    @property
    def spool_bytes(self) -> int:
        return self._spool_bytes


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _cut_torn_tail(segment: Path) -> int:
    """Truncate a segment after its last complete, parseable line; return lines dropped."""
    data = segment.read_bytes()
    keep = len(data)
    dropped = 0
    while keep:
        end = data.rfind(b"\n", 0, keep - 1) + 1  # start of the last line
        line = data[end:keep]
        if line.endswith(b"\n"):
            try:
                json.loads(line)
                break
            except ValueError:
                pass
        dropped += 1
        keep = end
    if keep != len(data):
        with open(segment, "r+b") as handle:
            handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
    return dropped


def _last_event(segment: Path) -> tuple[str, str] | None:
    data = segment.read_bytes().rstrip(b"\n")
    if not data:
        return None
    event = json.loads(data[data.rfind(b"\n") + 1 :])
    return str(event["id"]), str(event["hash"])
