"""The policy in force, reloaded from its source without stalling requests.

Three sources: a directory of RBACPolicy YAML files (standalone, unsigned: whoever runs the
machine is the admin), a signed bundle file, or signed bundles delivered by the broker
(cluster). A signed bundle is verified against the trusted keys for this sidecar's
namespace, and refused when it is unsigned, forged, signed by an untrusted key, meant for
another namespace, older (a lower serial) than the bundle in force, or a different bundle
under the same serial; the bundle in force stays, and the refusal is logged and counted.

A reload reads, verifies and compiles in a worker thread, then swaps the (index, cache) pair
in one assignment on the event loop; a request sees the old pair or the new one, never a
mix, and never a decision cached under the old bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate import errors, policy_files
from sidegate.policy import bundle, caching, models, rules, signing
from sidegate.sidecar import credentials
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Loaded:
    index: rules.PolicyIndex
    # Standalone: the policies and the file defining each (namespace/name), for admin writes.
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    policies: dict[str, models.RBACPolicy] = dataclasses.field(default_factory=dict)
    # Cluster: the bundle as read. Kept as bytes, not models (the admin API parses it when
    # asked): the garbage collector never has to walk ten thousand policies' objects.
    raw_bundle: bytes | None = None
    # Signed bundles: the serial and a digest of the envelope, to refuse an older one.
    serial: int | None = None
    envelope_digest: bytes | None = None

    @property
    def hash(self) -> str:
        return self.index.hash

    def bundle(self) -> bundle.PolicyBundle:
        if self.raw_bundle is not None:
            return bundle.loads(self.raw_bundle)
        return bundle.to_bundle(self.policies.values())


def read_directory(directory: Path) -> Loaded:
    """Every RBACPolicy in the directory's YAML files; one bad file rejects the whole read."""
    found = policy_files.read([directory])
    if found.problems:
        raise errors.BundleRejected("; ".join(found.problems))
    for warning in found.warnings:
        logger.warning("policy file warning: %s", warning)
    index = rules.PolicyIndex(bundle.to_bundle(found.policies))
    return Loaded(index, found.files, {"/".join(p.key): p for p in found.policies})


def subjects(loaded: Loaded) -> set[str]:
    """The callers some policy names, as namespace/kind/name."""
    return {
        f"{policy.key[0]}/{subject.kind}/{subject.name}"
        for policy in loaded.policies.values()
        for subject in policy.spec.subjects
    }


class DirectoryReader:
    """``read_directory``, warning loudly when a change leaves a caller that had a policy
    with none (deny by default then refuses everything it asks)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._subjects: set[str] | None = None

    def __call__(self) -> Loaded:
        loaded = read_directory(self.directory)
        now = subjects(loaded)
        lost = sorted(self._subjects - now) if self._subjects is not None else []
        if lost:
            logger.warning(
                "policy change leaves callers with no policy: everything they ask is denied",
                extra={"source": str(self.directory), "callers": lost[:50], "count": len(lost)},
            )
        self._subjects = now
        return loaded


@contextlib.contextmanager
def quiet_for_the_event_loop() -> Iterator[None]:
    """Run a large load in a worker thread without stalling requests on the event loop.

    * The cyclic garbage collector is paused: a 10,000-policy bundle makes a million
      short-lived objects, and collections while they live cost 4x the load itself.
    * At the end, what survived (the new index) is moved out of the collector's way with
      ``gc.freeze()``, so the first collection afterwards does not walk it all at once
      (measured: an 80 ms pause). The next load unfreezes first, so nothing stays frozen
      for longer than one bundle's lifetime.
    * The thread hands the interpreter back every millisecond instead of every five.
    """
    was_enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.unfreeze()
    gc.disable()
    sys.setswitchinterval(min(interval, 0.001))
    try:
        yield
    finally:
        sys.setswitchinterval(interval)
        gc.freeze()
        if was_enabled:
            gc.enable()


@dataclasses.dataclass(frozen=True)
class Signers:
    """Who may sign this sidecar's bundles, and the namespace they must be signed for."""

    keys: dict[str, ed25519.Ed25519PublicKey]
    namespace: str

    @classmethod
    def of(cls, texts: list[str], namespace: str) -> Signers:
        return cls(signing.trusted_keys(texts), namespace)


def compile_bundle(data: bytes) -> Loaded:
    claimed, policies = bundle.read(data)
    with quiet_for_the_event_loop():  # parsed models die as soon as they are compiled
        index = rules.PolicyIndex.from_policies(claimed, policies)
    return Loaded(index, raw_bundle=data)


def read_signed(envelope: bytes, signers: Signers) -> Loaded:
    """Verify a signed envelope, then compile the bundle inside it."""
    verified = signing.verify(envelope, signers.keys, namespace=signers.namespace)
    loaded = compile_bundle(verified.bundle)
    digest = hashlib.sha256(envelope).digest()
    return dataclasses.replace(loaded, serial=verified.serial, envelope_digest=digest)


def read_bundle_file(path: Path, signers: Signers | None = None) -> Loaded:
    """A bundle file: signed (verified with ``signers``), or plain when no signers are given
    (the benchmarks and tools that compile a bundle the operator has not signed)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.BundleRejected(f"{path}: unreadable ({exc.strerror})") from None
    try:
        return compile_bundle(data) if signers is None else read_signed(data, signers)
    except errors.BundleRejected as exc:
        raise errors.BundleRejected(f"{path}: {exc}") from None


def check_serial(new: Loaded, in_force: Loaded | None) -> None:
    """Refuse a signed bundle older than the one in force, or another under its serial."""
    if in_force is None or in_force.serial is None or new.serial is None:
        return
    if new.serial < in_force.serial:
        raise errors.BundleRejected(
            f"serial {new.serial} is older than the bundle in force ({in_force.serial})"
        )
    if new.serial == in_force.serial and new.envelope_digest != in_force.envelope_digest:
        raise errors.BundleRejected(
            f"serial {new.serial} is the bundle in force's, with different content"
        )


class PolicyHolder:
    """Holds the compiled policy in force and answers decisions from it."""

    def __init__(
        self,
        read: Callable[[], Loaded],
        *,
        watch_directory: Path | None,
        cache_ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        source: str = "",
        report: credentials.Reporter | None = None,
        signers: Signers | None = None,
    ) -> None:
        self._report = report or credentials.ignore_reports
        self._read = read
        self.signers = signers
        self.watch_directory = watch_directory
        self.source = source
        self._ttl = cache_ttl
        self._clock = clock
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.loaded: Loaded | None = None
        self.last_reload_error: str | None = None  # why the last reload was rejected, if it was
        self._cache = self._new_cache(rules.PolicyIndex(bundle.empty()))  # deny-all until loaded

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    @property
    def index(self) -> rules.PolicyIndex:
        return self._cache.index

    def decide(self, caller: rules.Caller, model: str, action: str) -> rules.Decision:
        return self._cache.decide(caller, model, action)

    def _new_cache(self, index: rules.PolicyIndex) -> caching.DecisionCache:
        return caching.DecisionCache(index, ttl=self._ttl, clock=self._clock)

    def install(self, loaded: Loaded) -> None:
        self._cache = self._new_cache(loaded.index)  # the one atomic swap: index and cache
        self.loaded = loaded
        self._metrics.policies_loaded.set(loaded.index.size)
        if loaded.serial is not None:
            self._metrics.policy_serial.set(loaded.serial)

    async def reload(self) -> bool:
        """Re-read the source; keep the policy in force if the new one is bad."""
        return await self._load(self._read)

    async def install_signed(self, envelope: bytes) -> bool:
        """Verify and install a signed bundle the broker delivered; the same checks and the
        same last-good rule as a file. The bundle in force again is a no-op."""
        signers = self.signers
        assert signers is not None  # broker mode always has trusted keys (settings)
        if (
            self.loaded is not None
            and self.loaded.envelope_digest == hashlib.sha256(envelope).digest()
        ):
            return True
        return await self._load(lambda: read_signed(envelope, signers))

    async def _load(self, read: Callable[[], Loaded]) -> bool:
        async with self._lock:  # two inotify bursts must not race to install
            previous = self.loaded.hash if self.loaded else None
            try:
                loaded = await asyncio.to_thread(read)
                check_serial(loaded, self.loaded)
            except errors.BundleRejected as exc:
                self.last_reload_error = str(exc)[:500]
                self._metrics.policy_reload_failed.set(1)
                self._metrics.policy_reloads.labels("failed").inc()
                self._report("policy.reload", "rejected", str(exc)[:500], {"route": "policy"})
                logger.error(
                    "policy rejected, %s",
                    "keeping the policy in force" if self.loaded else "denying everything",
                    extra={"source": self.source, "reason": str(exc)},
                )
                return False
            # The old index and cache are taken apart in a worker thread, piecemeal: freed
            # here in one go they would stall the event loop (measured: ~20 ms).
            old = self._cache
            self.install(loaded)
            await asyncio.to_thread(_dismantle, old)
            self.last_reload_error = None
            self._metrics.policy_reload_failed.set(0)
            self._metrics.policy_reloads.labels("ok").inc()
            self._report("policy.reload", "ok", loaded.hash, {"route": "policy"})
            if loaded.hash != previous:
                logger.info(
                    "policy loaded",
                    extra={
                        "source": self.source,
                        "policies": loaded.index.size,
                        "hash": loaded.hash,
                    },
                )
            return True


def _dismantle(cache: caching.DecisionCache) -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(min(interval, 0.001))
    try:
        cache.dismantle()
    finally:
        sys.setswitchinterval(interval)


def _waiting_for_the_broker() -> Loaded:
    raise errors.BundleRejected("no bundle delivered by the broker yet")


def holder_for(
    directory: Path | None,
    bundle_file: Path | None,
    *,
    cache_ttl: float,
    metrics: Metrics,
    report: credentials.Reporter | None = None,
    signers: Signers | None = None,
) -> PolicyHolder:
    """The holder of a policy directory, a signed bundle file, or (neither: broker mode)
    the bundles the broker delivers (``install_signed``)."""
    if directory is None and bundle_file is None:
        return PolicyHolder(
            _waiting_for_the_broker,
            watch_directory=None,
            cache_ttl=cache_ttl,
            metrics=metrics,
            source="broker",
            report=report,
            signers=signers,
        )
    if directory is not None:
        return PolicyHolder(
            DirectoryReader(directory),
            watch_directory=directory,
            cache_ttl=cache_ttl,
            metrics=metrics,
            source=str(directory),
            report=report,
        )
    assert bundle_file is not None and signers is not None  # settings: keys with a file
    return PolicyHolder(
        lambda: read_bundle_file(bundle_file, signers),
        watch_directory=bundle_file.parent,
        cache_ttl=cache_ttl,
        metrics=metrics,
        source=str(bundle_file),
        report=report,
        signers=signers,
    )
