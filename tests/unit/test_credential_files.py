"""What counts as a usable key file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidegate import errors
from sidegate.sidecar import credentials, watching


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"two tokens", "single printable token"),
        (b"line\nbreak", "single printable token"),
        (b"ctl\x07char", "single printable token"),
        (b"\xff\xfe", "not ASCII"),
        (b"k" * 9000, "larger than"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "openai"
    path.write_bytes(content)
    with pytest.raises(errors.CredentialRejected) as caught:
        credentials.read_key(path)
    assert reason in str(caught.value) and str(path) in str(caught.value)
    if content.strip():
        assert content.decode("latin-1")[:4] not in str(caught.value).replace(str(path), "")


def test_surrounding_whitespace_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_text("  abc123\n")
    assert credentials.read_key(path).reveal() == "abc123"


def test_missing_and_unreadable(tmp_path: Path) -> None:
    with pytest.raises(errors.CredentialRejected, match="missing"):
        credentials.read_key(tmp_path / "nope")
    with pytest.raises(errors.CredentialRejected, match="unreadable"):
        credentials.read_key(tmp_path)  # a directory


def test_which_names_trigger_a_reload() -> None:
    assert watching.is_relevant("..data")
    assert watching.is_relevant("openai")
    assert not watching.is_relevant("..data_tmp")
    assert not watching.is_relevant("..2026_11_22_10_00_00.123")
    assert not watching.is_relevant(".openai.swp")
