"""The keys in force: loaded from files or a broker delivery, last good wins, the overlap key,
the staleness limit, and what metrics, the audit trail and the logs are told."""

from __future__ import annotations

import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from sidegate import errors
from sidegate.redact import MASK, Redactor, Secret
from sidegate.sidecar import credentials
from sidegate.sidecar.metrics import Metrics

LOGGER = "sidegate.sidecar.credentials"


def new_key() -> str:
    return "key" + secrets.token_hex(16)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, directory: Path | None, key_files: dict[str, str]) -> None:
        self.metrics = Metrics()
        self.redactor = Redactor()
        self.reports: list[tuple[str, str, str | None, dict[str, str]]] = []
        self.clock = Clock()
        self.store = credentials.CredentialStore(
            directory,
            key_files,
            self.metrics,
            self.redactor,
            report=lambda *report: self.reports.append(report),
            clock=self.clock,
        )

    def reloads(self, provider: str, result: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "sidegate_credential_reloads_total", {"provider": provider, "result": result}
        )
        return value or 0.0

    def loaded(self, provider: str) -> float | None:
        return self.metrics.registry.get_sample_value(
            "sidegate_credential_loaded", {"provider": provider}
        )

    def current(self, provider: str) -> tuple[str | None, str | None]:
        found = self.store.get(provider)
        if found is None:
            return None, None
        return found.current.reveal(), found.previous.reveal() if found.previous else None


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (
            r.levelname,
            r.getMessage(),
            {k: getattr(r, k) for k in ("provider", "reason", "overlap_key") if hasattr(r, k)},
        )
        for r in caplog.records
        if r.name == LOGGER
    ]


# ---- one key's bytes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"k" * 8193, "larger than 8192 bytes"),
        ("clé".encode(), "not ASCII text"),
        (b" \t\r\n", "empty"),
        (b"a\tb", "not a single printable token"),
        (b"ab\x7f", "not a single printable token"),  # DEL: not printable, not a space
    ],
)
def test_a_key_is_refused_with_where_and_why(raw: bytes, reason: str) -> None:
    with pytest.raises(errors.CredentialRejected) as caught:
        credentials.parse_key(raw, "the file")
    assert str(caught.value) == f"the file: {reason}"


def test_a_key_of_exactly_the_limit_is_accepted(tmp_path: Path) -> None:
    assert credentials.parse_key(b"k" * 8192, "x").reveal() == "k" * 8192
    path = tmp_path / "openai"
    path.write_bytes(b"k" * 8192 + b"\n")  # the limit counts the key, read one byte past it
    with pytest.raises(errors.CredentialRejected, match="larger than 8192 bytes"):
        credentials.read_key(path)
    path.write_bytes(b"k" * 8192)
    assert credentials.read_key(path).reveal() == "k" * 8192


def test_a_key_file_is_read_no_further_than_the_limit(tmp_path: Path) -> None:
    """A FIFO (or a device) mounted where the key should be: read up to one byte past the
    limit and refused, not read to an end that may never come."""
    path = tmp_path / "openai"
    os.mkfifo(path)
    done = threading.Event()
    gave_up = []

    def write() -> None:
        with path.open("wb") as pipe:
            pipe.write(b"k" * 9000)
            pipe.flush()
            gave_up.append(not done.wait(10))  # the reader stops by itself, or this ends it

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with pytest.raises(errors.CredentialRejected, match="larger than 8192 bytes"):
            credentials.read_key(path)
    finally:
        done.set()
        writer.join()
    assert gave_up == [False]


def test_a_file_that_cannot_be_read_is_named_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(errors.CredentialRejected) as missing:
        credentials.read_key(tmp_path / "nope")
    assert str(missing.value) == f"{tmp_path / 'nope'}: missing"
    with pytest.raises(errors.CredentialRejected) as unreadable:
        credentials.read_key(tmp_path)
    assert str(unreadable.value) == f"{tmp_path}: unreadable (Is a directory)"


# ---- the store, from files ------------------------------------------------------------------


def test_keys_load_with_their_overlap_key_and_are_remembered_for_redaction(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    key, old, other = new_key(), new_key(), new_key()
    (tmp_path / "openai").write_text(key + "\n")
    (tmp_path / "openai.previous").write_text(old)
    (tmp_path / "anthropic").write_text(other)
    h = Harness(tmp_path, {"openai": "openai", "anthropic": "anthropic"})
    assert not h.store.ready and h.store.missing() == ["anthropic", "openai"]
    h.store.reload()
    assert h.current("openai") == (key, old)
    assert h.current("anthropic") == (other, None)
    assert h.store.get("unknown") is None
    assert h.store.ready and h.store.missing() == [] and not h.store.stale
    assert h.redactor.scrub(f"{key} {old} {other}") == f"{MASK} {MASK} {MASK}"
    assert (h.reloads("openai", "ok"), h.reloads("anthropic", "ok")) == (1, 1)
    assert (h.loaded("openai"), h.loaded("anthropic")) == (1, 1)
    assert h.reports == [
        ("credential.reload", "ok", None, {"provider": "openai"}),
        ("credential.reload", "ok", None, {"provider": "anthropic"}),
    ]
    assert messages(caplog) == [
        ("INFO", "credential loaded", {"provider": "openai", "overlap_key": True}),
        ("INFO", "credential loaded", {"provider": "anthropic", "overlap_key": False}),
    ]
    # the same files again: nothing changed, nothing counted or reported
    h.store.reload()
    assert h.reloads("openai", "ok") == 1 and len(h.reports) == 2


def test_a_bad_new_key_keeps_the_one_in_force(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = new_key()
    (tmp_path / "openai").write_text(key)
    h = Harness(tmp_path, {"openai": "openai", "anthropic": "anthropic"})
    h.store.reload()
    caplog.set_level(logging.INFO, LOGGER)
    caplog.clear()
    taken = h.store.get("openai")
    (tmp_path / "openai").write_text("two tokens")
    h.store.reload()
    assert h.store.get("openai") is taken
    assert h.reloads("openai", "failed") == 1 and h.reloads("anthropic", "failed") == 2
    assert (h.loaded("openai"), h.loaded("anthropic")) == (1, 0)
    assert not h.store.ready and h.store.missing() == ["anthropic"]
    where, gone = tmp_path / "openai", tmp_path / "anthropic"
    assert h.reports[-2:] == [
        (
            "credential.reload",
            "rejected",
            f"{where}: not a single printable token",
            {"provider": "openai"},
        ),
        ("credential.reload", "rejected", f"{gone}: missing", {"provider": "anthropic"}),
    ]
    assert messages(caplog) == [
        (
            "ERROR",
            "credential rejected, keeping the key in force",
            {"provider": "openai", "reason": f"{where}: not a single printable token"},
        ),
        (
            "ERROR",
            "credential rejected, provider has no key",
            {"provider": "anthropic", "reason": f"{gone}: missing"},
        ),
    ]


def test_the_overlap_key_ends_with_its_file_and_a_bad_one_keeps_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key, old, newer = new_key(), new_key(), new_key()
    (tmp_path / "openai").write_text(key)
    (tmp_path / "openai.previous").write_text(old)
    h = Harness(tmp_path, {"openai": "openai"})
    h.store.reload()
    caplog.set_level(logging.INFO, LOGGER)
    # Only what the reload below logs: the first one's INFO is captured too when an earlier
    # test in this process left the logger at INFO.
    caplog.clear()
    # a new key with a broken overlap file: the new key, the last good overlap key
    (tmp_path / "openai").write_text(newer)
    (tmp_path / "openai.previous").write_text("")
    h.store.reload()
    assert h.current("openai") == (newer, old)
    assert messages(caplog)[0] == (
        "ERROR",
        "previous credential rejected, keeping the one in force",
        {"provider": "openai", "reason": f"{tmp_path / 'openai.previous'}: empty"},
    )
    # the rotation window is over: the overlap file is gone
    (tmp_path / "openai.previous").unlink()
    h.store.reload()
    assert h.current("openai") == (newer, None)
    # a dangling overlap symlink exists but cannot be read: no overlap key, and no error
    (tmp_path / "openai.previous").symlink_to(tmp_path / "nowhere")
    h.store.reload()
    assert h.current("openai") == (newer, None)


def test_a_first_load_with_a_broken_overlap_file_has_no_overlap_key(tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "openai").write_text(key)
    (tmp_path / "openai.previous").write_text("a b")
    h = Harness(tmp_path, {"openai": "openai"})
    h.store.reload()
    assert h.current("openai") == (key, None)


# ---- the store, from a broker ---------------------------------------------------------------


def test_delivered_keys_take_the_same_checks(caplog: pytest.LogCaptureFixture) -> None:
    key, old = new_key(), new_key()
    h = Harness(None, {"openai": "openai-key", "anthropic": "anthropic-key"})
    h.store.install(
        {
            "openai-key": Secret(key),
            "openai-key.previous": Secret(old),
            "anthropic-key": Secret("clé"),
        }
    )
    assert h.current("openai") == (key, old)
    assert h.store.get("anthropic") is None
    assert h.reports[-1] == (
        "credential.reload",
        "rejected",
        "delivered key anthropic-key: not ASCII text",
        {"provider": "anthropic"},
    )
    h.store.install({"openai-key": Secret(key)})
    assert h.current("openai") == (key, None)
    assert h.reports[-1][2] == "delivered key anthropic-key: missing"


def test_a_delivered_lone_surrogate_is_refused_not_mangled_into_a_key() -> None:
    h = Harness(None, {"openai": "k"})
    h.store.install({"k": Secret("\ud800")})
    assert h.store.get("openai") is None
    assert h.reports[-1][2] == "delivered key k: not ASCII text"


def test_delivered_keys_expire_when_the_broker_is_not_heard_from() -> None:
    key = new_key()
    h = Harness(None, {"openai": "k"})
    h.store.install({"k": Secret(key)})
    h.store.usable_until = 150.0
    h.clock.now = 150.0
    assert not h.store.stale and h.store.ready
    assert h.current("openai") == (key, None)
    h.clock.now = 150.001
    assert h.store.stale and not h.store.ready
    with pytest.raises(errors.BrokerUnreachable) as caught:
        h.store.get("openai")
    assert str(caught.value) == (
        "the credential broker has not been reachable for longer than allowed"
    )
    h.store.usable_until = None  # keys from files never expire
    assert h.current("openai") == (key, None)
    assert not h.store.stale


def test_reports_are_optional() -> None:
    store = credentials.CredentialStore(None, {"openai": "k"}, Metrics(), Redactor())
    store.install({})
    assert store.get("openai") is None
    assert credentials.ignore_reports("a", "b", None, {}) is None
