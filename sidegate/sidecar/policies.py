"""The policy in force, reloaded from its source without stalling requests.

Two sources: a directory of RBACPolicy YAML files (standalone) or the bundle file the
operator writes (cluster). A reload reads and compiles in a worker thread, then swaps the
(index, cache) pair in one assignment on the event loop; a request sees the old pair or the
new one, never a mix, and never a decision cached under the old bundle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

from sidegate import errors
from sidegate.policy import bundle, caching, documents, models, rules
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

POLICY_SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass(frozen=True)
class Loaded:
    bundle: bundle.PolicyBundle
    # Standalone only: which file defines each policy (namespace/name), for admin writes.
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    policies: dict[str, models.RBACPolicy] = dataclasses.field(default_factory=dict)


def read_directory(directory: Path) -> Loaded:
    """Every RBACPolicy in the directory's YAML files; one bad file rejects the whole read."""
    found: list[models.RBACPolicy] = []
    files: dict[str, Path] = {}
    problems: list[str] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or path.suffix not in POLICY_SUFFIXES or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: unreadable ({exc})")
            continue
        try:
            parsed = documents.parse(text, str(path))
        except documents.PolicyDocumentError as exc:
            problems.extend(str(p) for p in exc.problems)
            continue
        for policy in parsed:
            key = "/".join(policy.key)
            if key in files:
                problems.append(f"{path}: policy {key} is also defined in {files[key]}")
            files[key] = path
            found.append(policy)
    if problems:
        raise errors.BundleRejected("; ".join(problems))
    return Loaded(bundle.to_bundle(found), files, {"/".join(p.key): p for p in found})


def read_bundle_file(path: Path) -> Loaded:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise errors.BundleRejected(f"{path}: unreadable ({exc.strerror})") from None
    try:
        return Loaded(bundle.loads(data))
    except errors.BundleRejected as exc:
        raise errors.BundleRejected(f"{path}: {exc}") from None


class PolicyHolder:
    """Holds the compiled policy in force and answers decisions from it."""

    def __init__(
        self,
        read: Callable[[], Loaded],
        *,
        watch_directory: Path,
        cache_ttl: float,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        source: str = "",
    ) -> None:
        self._read = read
        self.watch_directory = watch_directory
        self.source = source
        self._ttl = cache_ttl
        self._clock = clock
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.loaded: Loaded | None = None
        self._cache = self._new_cache(bundle.empty())  # deny-all until the first load

    @property
    def ready(self) -> bool:
        return self.loaded is not None

    @property
    def index(self) -> rules.PolicyIndex:
        return self._cache.index

    def decide(self, caller: rules.Caller, model: str, action: str) -> rules.Decision:
        return self._cache.decide(caller, model, action)

    def _new_cache(self, loaded: bundle.PolicyBundle) -> caching.DecisionCache:
        return caching.DecisionCache(rules.PolicyIndex(loaded), ttl=self._ttl, clock=self._clock)

    def install(self, loaded: Loaded, cache: caching.DecisionCache | None = None) -> None:
        self._cache = cache or self._new_cache(loaded.bundle)  # the one atomic swap
        self.loaded = loaded
        self._metrics.policies_loaded.set(len(loaded.bundle.policies))

    async def reload(self) -> bool:
        """Re-read the source; keep the policy in force if the new one is bad."""
        async with self._lock:  # two inotify bursts must not race to install
            previous = self.loaded.bundle.hash if self.loaded else None
            try:
                loaded, cache = await asyncio.to_thread(self._read_and_compile)
            except errors.BundleRejected as exc:
                self._metrics.policy_reloads.labels("failed").inc()
                logger.error(
                    "policy rejected, %s",
                    "keeping the policy in force" if self.loaded else "denying everything",
                    extra={"source": self.source, "reason": str(exc)},
                )
                return False
            self.install(loaded, cache)
            self._metrics.policy_reloads.labels("ok").inc()
            if loaded.bundle.hash != previous:
                logger.info(
                    "policy loaded",
                    extra={
                        "source": self.source,
                        "policies": len(loaded.bundle.policies),
                        "hash": loaded.bundle.hash,
                    },
                )
            return True

    def _read_and_compile(self) -> tuple[Loaded, caching.DecisionCache]:
        loaded = self._read()
        return loaded, self._new_cache(loaded.bundle)


def holder_for(
    directory: Path | None, bundle_file: Path | None, *, cache_ttl: float, metrics: Metrics
) -> PolicyHolder:
    if directory is not None:
        return PolicyHolder(
            lambda: read_directory(directory),
            watch_directory=directory,
            cache_ttl=cache_ttl,
            metrics=metrics,
            source=str(directory),
        )
    assert bundle_file is not None  # settings validate exactly one source
    return PolicyHolder(
        lambda: read_bundle_file(bundle_file),
        watch_directory=bundle_file.parent,
        cache_ttl=cache_ttl,
        metrics=metrics,
        source=str(bundle_file),
    )
