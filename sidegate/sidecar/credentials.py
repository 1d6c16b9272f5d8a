"""Provider keys, read from files or delivered by the broker, swapped atomically.

A request takes its ``Credential`` once, at the start, and keeps it to the end: a rotation
in the middle of a stream does not change the key that stream uses. A new file (or delivered
value) that is empty, unreadable or malformed leaves the key in force untouched (last good
wins). Broker-delivered keys live in memory only, and only as long as the broker was last
heard from ``max_staleness`` ago: after that ``get`` refuses with ``broker_unreachable``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from sidegate import errors
from sidegate.redact import Redactor, Secret
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

PREVIOUS_SUFFIX = ".previous"

# Tells the audit trail about a reload: (action, result, reason, resource).
Reporter = Callable[[str, str, str | None, dict[str, str]], None]


def ignore_reports(action: str, result: str, reason: str | None, resource: dict[str, str]) -> None:
    return None


_MAX_KEY_BYTES = 8192


@dataclasses.dataclass(frozen=True, slots=True)
class Credential:
    current: Secret
    previous: Secret | None = None  # the key being rotated out, tried once on a 401


def read_key(path: Path) -> Secret:
    """Read one key file; raise CredentialRejected naming the file (never the content)."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_MAX_KEY_BYTES + 1)
    except FileNotFoundError:
        raise errors.CredentialRejected(f"{path}: missing") from None
    except OSError as exc:
        raise errors.CredentialRejected(f"{path}: unreadable ({exc.strerror})") from None
    return parse_key(raw, str(path))


def parse_key(raw: bytes, where: str) -> Secret:
    """Check one key's bytes; raise CredentialRejected naming ``where`` (never the content)."""
    if len(raw) > _MAX_KEY_BYTES:
        raise errors.CredentialRejected(f"{where}: larger than {_MAX_KEY_BYTES} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise errors.CredentialRejected(f"{where}: not ASCII text") from None
    value = text.strip()
    if not value:
        raise errors.CredentialRejected(f"{where}: empty")
    # A key is one printable token; anything else (two lines, spaces, control characters)
    # is a half-written or wrong file, and sending it would put garbage in a header.
    if not value.isprintable() or any(c.isspace() for c in value):
        raise errors.CredentialRejected(f"{where}: not a single printable token")
    return Secret(value)


class CredentialStore:
    """The keys in force, one ``Credential`` per provider, replaced as a whole on reload.

    ``directory`` is None when the broker delivers the keys (``install``)."""

    def __init__(
        self,
        directory: Path | None,
        key_files: Mapping[str, str],
        metrics: Metrics,
        redactor: Redactor,
        *,
        report: Reporter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self._report = report or ignore_reports
        self._key_files = dict(key_files)  # provider → file name (or delivered key name)
        self._metrics = metrics
        self._redactor = redactor
        self._current: Mapping[str, Credential] = {}
        self._clock = clock
        # Delivered keys: usable until this clock reading (the broker moves it forward each
        # time it answers); None for keys from files, which are always usable.
        self.usable_until: float | None = None

    def get(self, provider: str) -> Credential | None:
        if self.usable_until is not None and self._clock() > self.usable_until:
            raise errors.BrokerUnreachable(
                "the credential broker has not been reachable for longer than allowed"
            )
        return self._current.get(provider)

    @property
    def stale(self) -> bool:
        return self.usable_until is not None and self._clock() > self.usable_until

    @property
    def ready(self) -> bool:
        return not self.stale and all(name in self._current for name in self._key_files)

    def missing(self) -> list[str]:
        return sorted(name for name in self._key_files if name not in self._current)

    def reload(self) -> None:
        """Re-read every key file; install what is good, keep the old value for what is not."""
        directory = self.directory
        assert directory is not None  # only file-backed stores are reloaded
        self._refresh(
            lambda name: read_key(directory / name),
            lambda name: os.path.lexists(directory / name),
        )

    def install(self, values: Mapping[str, Secret]) -> None:
        """Take the keys of a broker delivery (name → value, ``<name>.previous`` included);
        the same checks and last-good rule as files."""

        def read(name: str) -> Secret:
            found = values.get(name)
            if found is None:
                raise errors.CredentialRejected(f"delivered key {name}: missing")
            # surrogatepass: a lone surrogate (JSON can carry one) becomes bytes that are not
            # ASCII, so the key is refused; "replace" made it "?", a key that was installed.
            raw = found.reveal().encode("utf-8", "surrogatepass")
            return parse_key(raw, f"delivered key {name}")

        self._refresh(read, lambda name: name in values)

    def _refresh(self, read: Callable[[str], Secret], exists: Callable[[str], bool]) -> None:
        updated = dict(self._current)
        for provider, file_name in self._key_files.items():
            old = self._current.get(provider)
            try:
                current = read(file_name)
            except errors.CredentialRejected as exc:
                self._metrics.credential_reloads.labels(provider, "failed").inc()
                self._report("credential.reload", "rejected", str(exc), {"provider": provider})
                logger.error(
                    "credential rejected, %s",
                    "keeping the key in force" if old else "provider has no key",
                    extra={"provider": provider, "reason": str(exc)},
                )
                continue
            previous = self._read_previous(provider, file_name, old, read, exists)
            new = Credential(current, previous)
            if new != old:
                self._redactor.remember([s for s in (current, previous) if s])
                updated[provider] = new
                self._metrics.credential_reloads.labels(provider, "ok").inc()
                self._report("credential.reload", "ok", None, {"provider": provider})
                logger.info(
                    "credential loaded",
                    extra={"provider": provider, "overlap_key": previous is not None},
                )
        self._current = updated  # one atomic swap of the whole mapping
        for provider in self._key_files:
            self._metrics.credential_loaded.labels(provider).set(1 if provider in updated else 0)

    def _read_previous(
        self,
        provider: str,
        file_name: str,
        old: Credential | None,
        read: Callable[[str], Secret],
        exists: Callable[[str], bool],
    ) -> Secret | None:
        name = file_name + PREVIOUS_SUFFIX
        if not exists(name):
            return None  # no overlap key: the rotation window is over
        try:
            return read(name)
        except errors.CredentialRejected as exc:
            logger.error(
                "previous credential rejected, keeping the one in force",
                extra={"provider": provider, "reason": str(exc)},
            )
            return old.previous if old else None
