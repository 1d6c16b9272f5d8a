"""The scrapeable metrics listener of the real `sidegate sidecar` process: `GET /metrics` on
an address of its own, nothing else there, the API still on loopback only, and label values
that come from the config and fixed codes, never from what clients send, so a scrape holds
as many series after a flood of odd requests as before it."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidegate import scraping, standin
from sidegate.sidecar import endpoints
from tests.conftest import assert_no_secrets, fake_key
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process, free_port
from tests.helpers.sidecars import sidecar_process

# Another loopback address than the API's: reaching the metrics there and not the API shows
# the two listeners are bound apart (no test may send traffic off this machine's loopback).
SCRAPE_HOST = "127.0.0.2"


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.fixture
def sidecar(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    metrics_port: int,
) -> Iterator[Process]:
    admin_token = tmp_path / "admin-token"
    admin_token.write_text(secrets.token_urlsafe(24))

    def configure(config: dict[str, Any]) -> None:
        config["metrics"] = {"host": SCRAPE_HOST, "port": metrics_port}
        config["admin"] = {"port": free_port(), "token_file": str(admin_token)}
        config["audit"] = {"spool_directory": str(tmp_path / "spool")}

    process = sidecar_process(tmp_path, provider, ca_file, configure)
    yield process
    process.stop()


def scrape(port: int, host: str = SCRAPE_HOST) -> str:
    status, headers, body = call(f"http://{host}:{port}", "/metrics", method="GET")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert isinstance(body, str)
    return body


def series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_listener_serves_metrics_and_nothing_else(sidecar: Process, metrics_port: int) -> None:
    api_port = int(sidecar.origin.rsplit(":", 1)[1])
    assert call(sidecar.origin, "/v1/chat/completions", chat_body())[0] == 200
    text = scrape(metrics_port)
    assert 'sidegate_requests_total{model="gpt-4o-mini",provider="openai",route="chat"' in text
    assert "sidegate_audit_events_total" in text
    origin = f"http://{SCRAPE_HOST}:{metrics_port}"
    for method, path in (
        ("POST", "/v1/chat/completions"),
        ("GET", "/v1/models"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/admin/v1/policies"),
        ("GET", "/admin/v1/explain?model=gpt-4o-mini"),
        ("GET", "/metrics/../v1/models"),
    ):
        body = chat_body() if method == "POST" else None
        status, _, answer = call(origin, path, body, method=method)
        assert status in (404, 405), (path, status)
        assert "gpt-4o-mini" not in str(answer) and "policies" not in str(answer)
    assert call(origin, "/metrics", b"{}", method="POST")[0] == 405
    # The API is not on the scrape address: loopback only, as before.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((SCRAPE_HOST, api_port), timeout=5).close()


ODD_INPUTS = 20


def odd_requests(sidecar: Process) -> set[str]:
    """Requests whose every client-chosen part is new: model names, tenants, request ids,
    paths, keys. Returns the strings that must never reach a label."""
    sent = set()
    for _ in range(ODD_INPUTS):
        marker = "odd" + secrets.token_hex(6)
        sent.add(marker)
        key = fake_key()
        sent.add(key)
        headers = {
            "x-sidegate-tenant": marker,
            "x-request-id": marker,
            "authorization": f"Bearer {key}",
        }
        for model in (f"gpt-{marker}", marker, f"claude-{marker}"):
            call(sidecar.origin, "/v1/chat/completions", chat_body(model=model), headers)
        call(sidecar.origin, f"/v1/{marker}", chat_body(), headers)
        call(sidecar.origin, f"/v1/responses/{marker}", None, headers, method="GET")
        call(sidecar.origin, "/v1/chat/completions", b'{"model": 7}', headers)
        call(sidecar.origin, "/v1/chat/completions", chat_body(), {"host": f"{marker}.example"})
    return sent


def test_label_values_are_bounded_by_the_config_not_by_clients(
    sidecar: Process, metrics_port: int, tmp_path: Path
) -> None:
    config = _config_of(tmp_path)
    odd_requests(sidecar)
    before = series(scrape(metrics_port))
    sent = odd_requests(sidecar)  # the same shapes again, with new strings everywhere
    time.sleep(scraping.FRESH_SECONDS)  # a rendering made after them, not the last one
    text = scrape(metrics_port)
    after = series(text)
    assert before == after, "series grew with what clients sent"
    for marker in sent:
        assert marker not in text
    assert_no_secrets(text, sent)
    providers = {*config["providers"], "-"}
    models = {route["model"] for route in config["routes"]} | {"-"}
    routes = {e.action for e in endpoints.ALL} | {o.action for o in endpoints.STORED}
    routes |= {"models", "healthz", "readyz", "metrics", "other"}
    for _name, labels in after:
        found = dict(labels)
        assert found.get("provider", "-") in providers, found
        assert found.get("model", "-") in models, found
        assert found.get("route", "other") in routes, found
        assert found.get("status", "200").isdigit(), found


def _config_of(tmp_path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((tmp_path / "sidecar.yaml").read_text())
    return loaded


def test_without_a_metrics_section_nothing_listens_beyond_loopback(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    """Standalone, the listener is off: only the API (and its own loopback /metrics)."""
    process = sidecar_process(tmp_path, provider, ca_file)
    try:
        assert "metrics" not in _config_of(tmp_path)
        status, _, text = call(process.origin, "/metrics", method="GET")
        assert status == 200 and "sidegate_requests_total" in text
        stderr_lines = process.stop().splitlines()
    finally:
        process.stop()
    assert not [line for line in stderr_lines if "metrics listening" in line]
