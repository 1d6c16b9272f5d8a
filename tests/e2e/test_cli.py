"""The `sidegate` command as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sidegate import sidecar_options, standin
from sidegate.operator import injection
from tests.conftest import base_config, fake_key
from tests.helpers.http import call, chat_body

SIDEGATE = [sys.executable, "-m", "sidegate"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_help_explains_the_commands() -> None:
    out = subprocess.run([*SIDEGATE, "--help"], capture_output=True, text=True, check=True).stdout
    assert "sidecar" in out and "demo" in out
    out = subprocess.run(
        [*SIDEGATE, "sidecar", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--config" in out and "--allow-non-loopback" in out
    out = subprocess.run(
        [*SIDEGATE, "operator", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--own-namespace", "--overlap", "--admin-token-rotation", "--webhook-port"):
        assert flag in out


def test_operator_refuses_a_webhook_without_its_certificate() -> None:
    result = subprocess.run(
        [*SIDEGATE, "operator", "--webhook-port", "8443", "--sidecar-image", "x"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--webhook-cert" in result.stderr


CHART_VALUES = Path(__file__).parents[2] / "charts" / "sidegate" / "values.yaml"


def operator_with_sidecar_config(
    tmp_path: Path, config: object
) -> subprocess.CompletedProcess[str]:
    """`sidegate operator` as the chart starts it, up to the point it validates its flags."""
    file = tmp_path / "sidecar.yaml"
    file.write_text(yaml.safe_dump(config))
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    environment["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    return subprocess.run(
        [
            *SIDEGATE,
            "operator",
            "--webhook-port=8443",
            f"--webhook-cert={tmp_path / 'tls.crt'}",
            f"--webhook-key={tmp_path / 'tls.key'}",
            "--sidecar-image=registry.invalid/sidegate:1",
            f"--sidecar-config={file}",
        ],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_the_operator_refuses_a_sidecar_config_the_sidecar_would_refuse(tmp_path: Path) -> None:
    """A typo in the chart's sidecar.config stops the operator at start with the field's
    name, instead of crash-looping every pod injected with it."""
    config = yaml.safe_load(CHART_VALUES.read_text())["sidecar"]["config"]
    config["broker"]["url"] = "https://sidegate-broker.sidegate-system.svc:8443"  # the chart's
    config["broker"]["max_stalenes_seconds"] = 300  # the typo
    result = operator_with_sidecar_config(tmp_path, config)
    assert result.returncode == 2, result.stderr
    assert "sidecar.config" in result.stderr and "max_stalenes_seconds" in result.stderr
    # The chart's own config passes the same check (the process would go on to log in).
    config["broker"].pop("max_stalenes_seconds")
    spec = injection.SidecarSpec(image="sidegate:1", config=yaml.safe_dump(config))
    assert sidecar_options.config_problem(spec) is None


def test_config_env_must_be_set() -> None:
    environment = {k: v for k, v in os.environ.items() if k != "SIDEGATE_CONFIG"}
    result = subprocess.run(
        [*SIDEGATE, "sidecar", "--config-env", "SIDEGATE_CONFIG"],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 2 and "SIDEGATE_CONFIG is unset or empty" in result.stderr


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "credentials: {directory: .}\n"
        "providers: {openai: {kind: openai, base_url: 'http://example.com'}}\n"
        "routes: []\n"
        "listen: {prot: 1}\n"
    )
    result = subprocess.run(
        [*SIDEGATE, "sidecar", "--config", str(config)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "listen.prot: unknown key" in result.stderr
    assert "providers.openai: base_url: http:// is refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_non_loopback_needs_the_flag(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "credentials": {"directory": "."},
                "policy": {"directory": "."},
                "providers": {"o": {"kind": "openai"}},
                "routes": [{"model": "m", "provider": "o"}],
            }
        )
    )
    result = subprocess.run(
        [*SIDEGATE, "sidecar", "-c", str(config), "--host", "0.0.0.0"],  # noqa: S104
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "allow_non_loopback" in result.stderr


@pytest.mark.parametrize("source", ["file", "environment"])
def test_sidecar_serves_reloads_and_stops_on_sigterm(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path, source: str
) -> None:
    """From a file, or (as the injector does) from $SIDEGATE_CONFIG."""
    port, state = provider
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    keys = {name: fake_key() for name in ("openai", "anthropic", "azure", "compat")}
    for name, key in keys.items():
        (credentials / name).write_text(key)
    state.accepted_keys.update(keys.values())
    raw = base_config(port, ca_file, credentials)
    sidecar_port = free_port()
    raw["listen"] = {"port": sidecar_port}
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(raw))
    if source == "file":
        command, environment = ["--config", str(config)], dict(os.environ)
    else:
        command = ["--config-env", "SIDEGATE_CONFIG"]
        environment = {**os.environ, "SIDEGATE_CONFIG": config.read_text()}
    process = subprocess.Popen(
        [*SIDEGATE, "sidecar", *command], stderr=subprocess.PIPE, text=True, env=environment
    )
    origin = f"http://127.0.0.1:{sidecar_port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if call(origin, "/readyz", method="GET")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None, "sidecar exited early"
            assert time.monotonic() < deadline, "sidecar never became ready"
            time.sleep(0.05)
        status, _, answer = call(origin, "/v1/chat/completions", chat_body())
        assert status == 200 and answer["choices"][0]["message"]["content"] == "echo: hi"
        assert state.received[-1].key == keys["openai"]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0
    lines = [json.loads(line) for line in stderr.splitlines()]
    assert any(line["msg"] == "sidecar listening" for line in lines)
    assert any(line["msg"] == "shutting down" for line in lines)
    for key in keys.values():
        assert key not in stderr


def test_demo_runs_on_a_fresh_port() -> None:
    result = subprocess.run(
        [*SIDEGATE, "demo", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "chat completion -> 'echo: hello from the app'" in out
    assert "the app's placeholder reached it: False" in out
    assert "rotated the key file" in out and "no restart" in out
    assert "unknown field 'temprature'" in out


def test_policy_check_reports_file_line_and_exit_codes(tmp_path: Path) -> None:
    examples = Path(__file__).parents[2] / "examples" / "policies"
    good = subprocess.run(
        [*SIDEGATE, "policy", "check", str(examples)], capture_output=True, text=True
    )
    assert good.returncode == 0 and good.stdout.startswith("ok: 2 policies, bundle sha256:")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: sidegate.io/v1alpha1\nkind: RBACPolicy\nmetadata: {name: x, namespace: a}\n"
        "spec:\n  subjects: []\n  rules:\n    - effect: Alow\n      models: [m]\n"
    )
    result = subprocess.run(
        [*SIDEGATE, "policy", "check", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert (
        f"error: {bad}:7: spec.rules.0.effect: Input should be 'Allow' or 'Deny'" in result.stderr
    )
    inert = tmp_path / "inert.yaml"
    inert.write_text(bad.read_text().replace("Alow", "Allow"))
    result = subprocess.run(
        [*SIDEGATE, "policy", "check", str(inert)], capture_output=True, text=True
    )
    assert result.returncode == 0 and "applies to no one" in result.stderr
    strict = subprocess.run(
        [*SIDEGATE, "policy", "check", "--strict", str(inert)], capture_output=True, text=True
    )
    assert strict.returncode == 1


def test_policy_explain_and_bundle(tmp_path: Path) -> None:
    examples = str(Path(__file__).parents[2] / "examples" / "policies")
    base = [*SIDEGATE, "policy", "explain", "-p", examples, "-n", "default", "-s", "default"]
    denied = subprocess.run(
        [*base, "-m", "claude-3-opus", "-a", "messages"], capture_output=True, text=True
    )
    assert denied.returncode == 3
    assert (
        "DENIED" in denied.stdout
        and "default/chat-models rules[2]: Deny claude-*-opus*" in denied.stdout
    )
    allowed = subprocess.run(
        [*base, "-m", "gpt-4o-mini", "-t", "free-tier", "--json"], capture_output=True, text=True
    )
    assert allowed.returncode == 0
    answer = json.loads(allowed.stdout)
    # The service account's own limit, whatever it claims; the tenant's sub-budget inside it.
    assert answer["limits"]["requestsPerMinute"] == {"value": 600, "policy": "default/chat-models"}
    assert answer["tenantLimits"]["requestsPerMinute"] == {
        "value": 30,
        "policy": "default/chat-models",
    }
    refused = subprocess.run([*base, "-m", "gpt-4o-mini", "-t", "initech"], capture_output=True)
    assert refused.returncode == 3 and b"tenant_not_allowed" in refused.stdout
    output = tmp_path / "bundle.json"
    assert (
        subprocess.run([*SIDEGATE, "policy", "bundle", examples, "-o", str(output)]).returncode == 0
    )
    from sidegate.policy import bundle

    assert len(bundle.loads(output.read_bytes()).policies) == 2
