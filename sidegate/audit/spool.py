"""The durable local spool: append-only JSONL segments, group commit, signed digests,
crash recovery.

Events are chained, numbered, written and fsync'd in batches (group commit): only then is
an event written. Two modes (``acknowledged``):

* async: events gather for ``flush_interval`` (a few milliseconds) and the request does not
  wait; a crash can lose the events of the last few milliseconds' answers.
* acknowledged: ``emit`` returns a ticket and ``durable(ticket)`` resolves once the batch
  holding the event is on disk; the caller holds the response's final bytes until then.
  There is no gathering delay: every event that arrives while one fsync runs goes into the
  next, so concurrent requests share one fsync.

Layout under the spool directory::

    active/<first event id>.jsonl    the segment being written (one at a time)
    sealed/<first event id>.jsonl    closed segments, waiting for the exporter
    sealed/digest-<n>.json           signed digests (``digests``), waiting for the exporter
    sealed/key-<key id>.pem          this run's public key, exported before its digests
    digests/digest-<n>.json          the last digest written: where the chain goes on
    tail.json                        id, hash and sequence of the last sealed event (chain
                                     continuity across restarts after every upload)

Segments are sealed when they reach ``segment_max_bytes`` or ``segment_max_age``, and each
sealed segment gets a digest; with nothing to seal a digest is still written every
``digest_interval``. At start, a torn last line (a crash in the middle of a write; never
acknowledged) is cut off and counted, leftover active segments are sealed and signed with
the new run's key, and the chain goes on with an ``audit.restart`` event.
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

from sidegate.audit import digests, events, signing
from sidegate.audit.metrics import AuditMetrics

logger = logging.getLogger(__name__)

_MAX_PENDING = 100_000  # events waiting in memory; past it they are dropped (and counted)
_PROBE_INTERVAL = 1.0  # seconds between retries of an unwritable spool
_RESULTS_KEPT = 1024  # batch outcomes remembered for late durable() calls
DROPPED = -1  # the ticket of an event that was never queued


@dataclasses.dataclass(frozen=True)
class Identity:
    namespace: str
    service_account: str
    pod: str

    @property
    def trail(self) -> str:
        """NAMESPACE/POD: one trail per sidecar, as the exporter lays it out in S3."""
        return f"{self.namespace}/{self.pod or 'unknown-pod'}"


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
        signer: signing.Signer,
        digest_interval: float,
        acknowledged: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.active_dir = directory / "active"
        self.sealed_dir = directory / "sealed"
        self.digests_dir = directory / "digests"
        self._tail_file = directory / "tail.json"
        self.signer = signer
        self.acknowledged = acknowledged
        self._digest_interval = digest_interval
        self._identity = identity
        self._metrics = metrics
        self._max_bytes = max_bytes
        self._segment_max_bytes = segment_max_bytes
        self._segment_max_age = segment_max_age
        # Acknowledged: no gathering delay, the fsync in progress is what groups requests.
        self._flush_interval = 0.0 if acknowledged else flush_interval
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
        # Tickets: the batch now gathering, the last one finished, and how recent ones went.
        self._batch = 0
        self._done_through = -1
        self._results: dict[int, bool] = {}
        self._waiters: dict[int, list[asyncio.Future[bool]]] = {}
        # Writer state, touched only by one batch at a time:
        self._last_hash = events.GENESIS
        self._sequence = 0  # of the last event written
        self._head = digests.Head()
        self._last_digest_at = time.monotonic()
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

    @property
    def public_key(self) -> tuple[str, bytes]:
        """This run's signing key as (key id, PEM): what the start-up log prints, what is
        exported as ``key-ID.pem``, and what a broker registers for the pod."""
        return self.signer.key_id, self.signer.public_key_pem

    # -- the request path ---------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """Whether new LLM requests may be served (fail-closed: only while healthy)."""
        return self.healthy or self.fail_open

    def emit(self, record: dict[str, Any]) -> int:
        """Queue an event (without id, timestamp or hashes). Cheap: no I/O, no encoding.
        Returns the ticket ``durable`` takes."""
        if len(self._pending) >= _MAX_PENDING:
            self._drop(1, "too many events waiting for the spool")
            return DROPPED
        record.setdefault("at", self._clock())
        self._pending.append(record)
        if not self._wake.is_set():
            self._wake.set()
        return self._batch

    def durable(self, ticket: int) -> asyncio.Future[bool]:
        """Resolves once the batch holding the ticket's event is fsync'd (True) or was
        dropped (False: the spool is full or unwritable)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if ticket == DROPPED:
            future.set_result(False)
        elif ticket <= self._done_through:
            future.set_result(self._results.get(ticket, False))
        else:
            self._waiters.setdefault(ticket, []).append(future)
        return future

    def _take_batch(self) -> tuple[int, list[dict[str, Any]]]:
        number, batch = self._batch, self._pending
        self._batch, self._pending = number + 1, []
        return number, batch

    def _finish(self, number: int) -> None:
        """On the loop, after batch ``number`` was written or dropped: wake its requests."""
        self._done_through = max(self._done_through, number)
        for future in self._waiters.pop(number, ()):
            if not future.done():
                future.set_result(self._results.get(number, False))

    # -- start-up -----------------------------------------------------------------------

    def open(self) -> None:
        """Recover from whatever the last run left, publish this run's key, sign what the
        last run left unsigned, then chain on with a restart event."""
        for directory in (self.active_dir, self.sealed_dir, self.digests_dir):
            directory.mkdir(parents=True, exist_ok=True)
        torn = 0
        last_id, last_hash, last_sequence = self._read_tail()
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
                last_id, last_hash, last_sequence = found
        self._last_hash, self._sequence = last_hash, last_sequence
        self._recover_head()
        self._publish_key()
        for segment in self.sealed_segments():  # sealed by the last run but never signed
            try:
                summary = _summary(segment)
            except (KeyError, ValueError):
                logger.warning(
                    "audit segment without sequence numbers (an older version's): not signed",
                    extra={"segment": segment.name},
                )
                continue
            if summary is not None and summary.last_sequence > self._head.last_sequence:
                self._publish_digest(self._write_digest(summary, final=False))
        if torn:
            self._metrics.torn_lines.inc(torn)
            logger.warning("audit spool: dropped torn lines left by a crash", extra={"lines": torn})
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

    def _read_tail(self) -> tuple[str, str, int]:
        try:
            tail = json.loads(self._tail_file.read_text())
            return str(tail["id"]), str(tail["hash"]), int(tail.get("sequence", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return "", events.GENESIS, 0

    def _recover_head(self) -> None:
        """The last digest written is where the chain goes on. It is linked into sealed/
        again in case the crash came before the exporter saw it (an upload repeated with
        the same bytes is harmless: the verifier accepts identical object versions)."""
        written = sorted(self.digests_dir.glob("digest-*.json"))
        if not written:
            return
        last = written[-1]
        self._head = digests.Head.of(last.read_bytes())
        self._publish_digest(last.name)

    def _publish_key(self) -> None:
        """This run's public key, exported ahead of the digests it signs."""
        name = digests.key_file_name(self.signer.key_id)
        _write_atomically(self.sealed_dir / name, self.signer.public_key_pem.decode())
        logger.info(
            "audit signing key for this run",
            extra={
                "key_id": self.signer.key_id,
                "trail": self._identity.trail,
                "public_key": self.signer.public_key_pem.decode(),
            },
        )

    def _write_digest(self, segment: digests.SegmentSummary | None, *, final: bool) -> str:
        """Sign and write the next digest to digests/ (the chain's head); returns its name.
        The caller links it into sealed/ once what it covers is there."""
        head = self._head
        data = digests.make(
            self.signer,
            trail=self._identity.trail,
            sequence=head.sequence + 1,
            previous=head.hash,
            created=self._clock(),
            interval=self._digest_interval,
            last_sequence=segment.last_sequence if segment else head.last_sequence,
            segment=segment,
            final=final,
        )
        name = digests.file_name(head.sequence + 1)
        _write_atomically(self.digests_dir / name, data)
        for older in self.digests_dir.glob("digest-*.json"):
            if older.name < name:
                older.unlink()
        self._head = digests.Head.of(data)
        self._last_digest_at = time.monotonic()
        return name

    def _publish_digest(self, name: str) -> None:
        target = self.sealed_dir / name
        if not target.exists():
            os.link(self.digests_dir / name, target)
            _fsync_directory(self.sealed_dir)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.sealed.set)

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
            if self._flush_interval:
                await asyncio.sleep(self._flush_interval)  # let a group gather
            self._wake.clear()
            number, batch = self._take_batch()
            await asyncio.to_thread(self._write, number, batch)
            self._finish(number)

    def _next_deadline(self) -> float | None:
        if not self.healthy:
            return _PROBE_INTERVAL
        now = time.monotonic()
        deadline = self._last_digest_at + self._digest_interval - now
        if self._segment is not None:
            deadline = min(deadline, self._segment_opened + self._segment_max_age - now)
        return max(0.0, deadline)

    async def close(self) -> None:
        """Write what is queued, seal the active segment and sign a final digest (on
        shutdown): a verifier then knows the trail ends here on purpose."""
        self._stopping = True
        number, batch = self._take_batch()
        await asyncio.to_thread(self._write, number, batch)
        await asyncio.to_thread(self._locked_seal)
        for waiting in list(self._waiters):  # a cancelled writer's batch: its outcome is known
            self._finish(waiting)

    def _locked_seal(self) -> None:
        with self._write_lock:
            if not self.healthy:
                return
            if self._segment is not None:
                self._seal(final=True)
            else:
                self._idle_digest(final=True)

    def _write(self, number: int, batch: list[dict[str, Any]]) -> None:
        with self._write_lock:
            written = self._write_locked(batch)
            self._results[number] = written
            self._results.pop(number - _RESULTS_KEPT, None)
            if self.healthy and time.monotonic() - self._last_digest_at >= self._digest_interval:
                if self._segment is not None:
                    self._seal()
                else:
                    self._idle_digest(final=False)

    def _idle_digest(self, *, final: bool) -> None:
        try:
            self._publish_digest(self._write_digest(None, final=final))
        except OSError as exc:
            self._fail(f"unwritable ({exc.strerror})", 0)

    def _write_locked(self, batch: list[dict[str, Any]]) -> bool:
        if not self.healthy:
            self._probe()  # the only way back: it also seals what a failure left in active/
            if not self.healthy:
                if batch:
                    self._drop(len(batch), self._problem)
                return False
        if self._segment is not None and (
            time.monotonic() - self._segment_opened >= self._segment_max_age
        ):
            self._seal()
        if not batch or not self.healthy:
            if batch:
                self._drop(len(batch), self._problem)
            return False
        started = time.perf_counter()
        previous = self._last_hash
        sequence = self._sequence
        lines = []
        first_id = ""
        for record in batch:
            at = record.pop("at")
            sequence += 1
            event = {
                "version": events.SCHEMA_VERSION,
                "id": self._ulids.new(at),
                "sequence": sequence,
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
            return False
        try:
            fd = self._segment_fd if self._segment_fd is not None else self._open_segment(first_id)
            os.write(fd, data)
            os.fsync(fd)
        except OSError as exc:
            self._close_segment()
            self._fail(f"unwritable ({exc.strerror})", len(batch))
            return False
        # The chain moves on only once the batch is on disk.
        self._last_hash, self._sequence = previous, sequence
        self._segment_bytes += len(data)
        with self._size_lock:
            self._spool_bytes += len(data)
            self._metrics.spool_bytes.set(self._spool_bytes)
        self._metrics.events.labels("written").inc(len(batch))
        self._metrics.commit_seconds.observe(time.perf_counter() - started)
        if self._segment_bytes >= self._segment_max_bytes:
            self._seal()
        return True

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

    def _seal(self, *, final: bool = False) -> None:
        """Sign the segment, move it to sealed/, then publish its digest. Whichever step a
        crash interrupts, the next start finds the segment covered exactly once."""
        segment = self._segment
        self._close_segment()
        self._segment = None
        if segment is None:
            return
        try:
            summary = _summary(segment)
            if summary is None:
                segment.unlink()
                return
            name = self._write_digest(summary, final=final)
            target = self.sealed_dir / segment.name
            os.replace(segment, target)
            _fsync_directory(self.sealed_dir)
            self._publish_digest(name)
            found = _last_event(target)
            if found is not None:
                last_id, last_hash, last_sequence = found
                tail = {"id": last_id, "hash": last_hash, "sequence": last_sequence}
                _write_atomically(self._tail_file, json.dumps(tail))
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
            for directory in (self.active_dir, self.sealed_dir, self.digests_dir):
                directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            return
        with self._size_lock:
            if self._spool_bytes >= self._max_bytes:
                return
        # A segment whose sealing failed is still in active/: sign and seal it now, or its
        # events would wait for the next restart to be shipped.
        try:
            for orphan in sorted(self.active_dir.glob("*.jsonl")):
                _cut_torn_tail(orphan)  # a failed write's half line was never acknowledged
                summary = _summary(orphan)
                if summary is None:
                    orphan.unlink()
                    continue
                if summary.last_sequence > self._head.last_sequence:
                    name = self._write_digest(summary, final=False)
                else:  # signed before the failure
                    name = digests.file_name(self._head.sequence)
                os.replace(orphan, self.sealed_dir / orphan.name)
                _fsync_directory(self.sealed_dir)
                self._publish_digest(name)
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

    def sealed_files(self) -> list[Path]:
        """Everything waiting for export, in the order to send it: keys before the digests
        they verify, segments (named by first event id) in chain order, then digests."""
        found = [p for p in self.sealed_dir.iterdir() if not p.name.endswith(".tmp")]
        return sorted(found, key=lambda p: (not digests.is_key_name(p.name), p.name))

    def release(self, segment: Path) -> None:
        """The exporter confirmed the file: delete it and give its bytes back."""
        size = segment.stat().st_size
        segment.unlink()
        if not segment.name.endswith(".jsonl"):
            return  # keys and digests are not counted against the spool's bound
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


def _write_atomically(path: Path, content: str | bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(content.encode() if isinstance(content, str) else content)
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


def _last_event(segment: Path) -> tuple[str, str, int] | None:
    data = segment.read_bytes().rstrip(b"\n")
    if not data:
        return None
    event = json.loads(data[data.rfind(b"\n") + 1 :])
    return str(event["id"]), str(event["hash"]), int(event.get("sequence", 0))


def _summary(segment: Path) -> digests.SegmentSummary | None:
    """What a digest says of the segment; None when it is empty."""
    data = segment.read_bytes()
    if not data.strip():
        return None
    return digests.summarize(segment.name, data)
