"""The sidecar's broker mode in its config: everything secret comes from the broker, and
every bundle it takes (from the broker or a file) must be verifiable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sidegate.policy import signing
from tests.unit.test_settings import error_of, load, minimal

KEY = signing.encode_public_key(signing.generate_private_key().public_key())


def brokered(**changes: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "broker": {"url": "https://sidegate-broker.sidegate-system.svc:8443"},
        "policy": {"trusted_keys": [KEY]},
    }
    config = minimal(**{**defaults, **changes})
    del config["credentials"]
    return config


def test_a_brokered_config_needs_no_file_at_all(tmp_path: Path) -> None:
    config = load(tmp_path, brokered(admin={"port": 4001}))
    assert config.broker is not None and config.credentials is None
    assert config.broker.token_file == Path("/var/run/sidegate/token/token")
    assert config.broker.max_staleness_seconds == 300
    assert config.admin is not None and config.admin.token_file is None


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"credentials": {"directory": "c"}}, "credentials"),
        ({"policy": {"trusted_keys": [KEY], "bundle_file": "b.json"}}, "policy.bundle_file"),
        ({"policy": {"trusted_keys": [KEY], "directory": "p"}}, "policy.directory"),
        ({"admin": {"token_file": "t"}}, "admin.token_file"),
        (
            {"rate_limits": {"backend": "redis", "redis": {"url_file": "u"}}},
            "rate_limits.redis.url_file",
        ),
    ],
)
def test_with_a_broker_secret_files_are_refused(
    tmp_path: Path, change: dict[str, Any], named: str
) -> None:
    message = error_of(tmp_path, {**brokered(), **change})
    assert "with broker, leave out" in message and named in message


def test_a_broker_needs_trusted_keys_and_https(tmp_path: Path) -> None:
    assert "trusted_keys" in error_of(tmp_path, brokered(policy={}))
    plain = brokered(broker={"url": "http://sidegate-broker:8443"})
    assert "https://" in error_of(tmp_path, plain)
    both = brokered(broker={"url": "https://b:8443", "ca_pem": "x", "ca_file": "y"})
    assert "at most one" in error_of(tmp_path, both)


def test_a_bundle_file_needs_trusted_keys_and_keys_must_parse(tmp_path: Path) -> None:
    assert "trusted_keys" in error_of(tmp_path, minimal(policy={"bundle_file": "b.json"}))
    bad = minimal(policy={"bundle_file": "b.json", "trusted_keys": ["ed25519:nope"]})
    assert "policy.trusted_keys: an Ed25519 public key is 32 bytes" in error_of(tmp_path, bad)
    good = load(tmp_path, minimal(policy={"bundle_file": "b.json", "trusted_keys": [KEY]}))
    assert good.policy.trusted_keys == [KEY]


def test_without_a_broker_the_files_stay_required(tmp_path: Path) -> None:
    config = minimal()
    del config["credentials"]
    assert "credentials: required without broker" in error_of(tmp_path, config)
    assert "admin.token_file: required" in error_of(tmp_path, minimal(admin={"port": 1}))
