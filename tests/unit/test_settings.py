"""The config file: unknown keys, plain http, loopback, routes. Errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from sidegate import errors
from sidegate.sidecar import settings


def minimal(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "credentials": {"directory": "creds"},
        "policy": {"directory": "policies"},
        "providers": {"openai": {"kind": "openai"}},
        "routes": [{"model": "gpt-*", "provider": "openai"}],
    }
    config.update(changes)
    return config


def load(tmp_path: Path, config: dict[str, Any]) -> settings.SidecarSettings:
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return settings.load(path)


def error_of(tmp_path: Path, config: dict[str, Any]) -> str:
    with pytest.raises(errors.ConfigError) as caught:
        load(tmp_path, config)
    return str(caught.value)


def test_minimal_config_has_safe_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, minimal())
    assert config.listen.host == "127.0.0.1" and config.listen.port == 4000
    assert config.providers["openai"].base_url == "https://api.openai.com/v1"
    assert config.providers["openai"].tls.min_version == "1.2"
    assert config.credentials.directory == tmp_path / "creds"  # relative to the file


def test_an_audit_trail_is_acknowledged_unless_asked_otherwise(tmp_path: Path) -> None:
    """No answer before its event is on disk, in a config file as in the chart (which sets
    no durability of its own)."""
    config = load(tmp_path, minimal(audit={"spool_directory": "spool"}))
    assert config.audit is not None and config.audit.durability == "acknowledged"
    assert config.audit.fail_mode == "closed"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(listen={"hots": "127.0.0.1"}))
    assert "listen.hots: unknown key" in message
    message = error_of(tmp_path, minimal(providers={"openai": {"kind": "openai", "api_key": "x"}}))
    assert "providers.openai.api_key: unknown key" in message


def test_plain_http_is_refused_unless_loopback_and_explicit(tmp_path: Path) -> None:
    remote = {
        "kind": "openai_compatible",
        "base_url": "http://models.internal/v1",
        "allow_insecure_http": True,
    }
    assert "non-loopback" in error_of(tmp_path, minimal(providers={"openai": remote}))
    implicit = {"kind": "openai_compatible", "base_url": "http://127.0.0.1:8000/v1"}
    assert "allow_insecure_http" in error_of(tmp_path, minimal(providers={"openai": implicit}))
    explicit = {**implicit, "allow_insecure_http": True}
    assert (
        load(tmp_path, minimal(providers={"openai": explicit}))
        .providers["openai"]
        .base_url.startswith("http:")
    )


def test_credentials_in_urls_and_auth_headers_in_config_are_refused(tmp_path: Path) -> None:
    userinfo = "user" + ":" + "pw"  # built here so no credential-shaped URL is committed
    in_url = {"kind": "openai", "base_url": f"https://{userinfo}@api.openai.com/v1"}
    assert "must not carry credentials" in error_of(tmp_path, minimal(providers={"openai": in_url}))
    header = {"kind": "openai", "headers": {"Authorization": "Bearer x"}}
    assert "key file" in error_of(tmp_path, minimal(providers={"openai": header}))


@pytest.mark.parametrize(
    ("header", "why"),
    [
        ("Authorization", "credential"),
        ("Proxy-Authorization", "credential"),
        ("proxy-authorization", "credential"),
        ("x-api-key", "credential"),
        ("Api-Key", "credential"),
        ("cookie", "credential"),
        ("connection", "hop-by-hop"),
        ("keep-alive", "hop-by-hop"),
        ("proxy-connection", "hop-by-hop"),
        ("proxy-authenticate", "hop-by-hop"),
        ("TE", "hop-by-hop"),
        ("trailer", "hop-by-hop"),
        ("transfer-encoding", "hop-by-hop"),
        ("upgrade", "hop-by-hop"),
        ("host", "hop-by-hop"),
        ("content-length", "hop-by-hop"),
    ],
)
def test_forward_headers_refuse_credentials_and_hop_by_hop_headers(
    tmp_path: Path, header: str, why: str
) -> None:
    """A client's credential (its own, a proxy's, a cookie) must not reach the provider, and
    a header of the client's connection must not frame or steer the sidecar's: the error
    names the key and the header, even listed after an accepted one."""
    message = error_of(tmp_path, minimal(limits={"forward_headers": ["x-trace-tag", header]}))
    assert "limits.forward_headers" in message
    assert f"{header} can never be forwarded" in message and why in message


def test_forward_headers_accept_other_headers_lowercased(tmp_path: Path) -> None:
    config = load(tmp_path, minimal(limits={"forward_headers": ["X-Trace-Tag", "OpenAI-Project"]}))
    assert config.limits.forward_headers == ["x-trace-tag", "openai-project"]


def test_non_loopback_listen_needs_the_flag(tmp_path: Path) -> None:
    assert "allow_non_loopback" in error_of(tmp_path, minimal(listen={"host": "0.0.0.0"}))  # noqa: S104
    config = load(tmp_path, minimal(listen={"host": "0.0.0.0", "allow_non_loopback": True}))  # noqa: S104
    assert config.listen.allow_non_loopback


def test_routes_must_name_configured_providers(tmp_path: Path) -> None:
    message = error_of(tmp_path, minimal(routes=[{"model": "x", "provider": "openia"}]))
    assert "'openia' is not in providers" in message
    renamed_glob = [{"model": "gpt-*", "provider": "openai", "upstream_model": "y"}]
    assert "only an exact model name" in error_of(tmp_path, minimal(routes=renamed_glob))


def test_yaml_and_file_errors(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="cannot read"):
        settings.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("listen: [unclosed")
    with pytest.raises(errors.ConfigError, match="not valid YAML"):
        settings.load(bad)


def test_policy_source_is_required_and_single(tmp_path: Path) -> None:
    config = minimal()
    del config["policy"]
    assert "policy: required key missing" in error_of(tmp_path, config)
    both = {"directory": "p", "bundle_file": "b.json"}
    assert "exactly one of" in error_of(tmp_path, minimal(policy=both))


def test_identity_comes_from_the_downward_api_unless_the_file_says(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    environ = {
        "SIDEGATE_NAMESPACE": "team-a",
        "SIDEGATE_SERVICE_ACCOUNT": "chatbot",
        "SIDEGATE_POD_NAME": "p-1",
    }
    identity = settings.load(path, environ).identity
    assert (identity.namespace, identity.service_account, identity.pod) == (
        "team-a",
        "chatbot",
        "p-1",
    )
    path.write_text(yaml.safe_dump(minimal(identity={"namespace": "fixed"})))
    assert settings.load(path, environ).identity.namespace == "fixed"


def test_the_shipped_example_is_valid() -> None:
    example = Path(__file__).parents[2] / "examples" / "sidecar.yaml"
    config = settings.load(example)
    assert set(config.providers) == {"openai", "anthropic", "azure", "vllm"}
