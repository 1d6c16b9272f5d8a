"""Hostile and broken clients on raw sockets, against the real `sidegate sidecar` process:
every answer is the API's JSON error shape, nothing is echoed, slow clients are cut off."""

from __future__ import annotations

import json
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidegate import standin
from tests.conftest import KEY_SHAPES, fake_key
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process
from tests.helpers.sidecars import address, exchange, post, sidecar_process


def hardened(config: dict[str, Any]) -> None:
    config["listen"] = {
        "header_timeout_seconds": 1,
        "keepalive_timeout_seconds": 2,
        "max_connections": 4,
    }
    config["logging"] = {"access_log": True}


@pytest.fixture
def state(provider: tuple[int, standin.StandInState]) -> standin.StandInState:
    return provider[1]


@pytest.fixture
def sidecar(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> Iterator[Process]:
    process = sidecar_process(tmp_path, provider, ca_file, hardened)
    yield process
    process.stop()


def split(raw: bytes) -> tuple[int, dict[str, str], Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_unfinished_headers_are_cut_off_with_a_408(sidecar: Process) -> None:
    started = time.monotonic()
    raw = exchange(sidecar, b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    assert time.monotonic() - started < 9  # closed by the sidecar, not the test's timeout
    status, _, body = split(raw)
    assert status == 408 and body["error"]["code"] == "header_timeout"


def test_an_idle_keep_alive_connection_is_closed(sidecar: Process) -> None:
    with socket.create_connection(address(sidecar), timeout=10) as connection:
        connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = b""
        started = time.monotonic()
        while chunk := connection.recv(65536):
            received += chunk
        assert time.monotonic() - started < 9
    assert received.startswith(b"HTTP/1.1 200")


def test_malformed_http_is_a_json_400_that_echoes_nothing(sidecar: Process) -> None:
    key = fake_key()
    raw = exchange(
        sidecar,
        b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {key}\r\nno colon here\r\n\r\n".encode(),
    )
    status, headers, body = split(raw)
    assert status == 400 and body["error"]["code"] == "malformed_request"
    assert key not in raw.decode("latin-1") and "colon" not in raw.decode("latin-1")
    assert "server" not in headers
    log = sidecar.stop()
    assert "malformed request refused" in log and "Traceback" not in log
    assert log.count("malformed request refused") == 1
    assert key not in log and KEY_SHAPES.search(log) is None


def test_an_overlong_header_is_a_json_431(sidecar: Process) -> None:
    secret = secrets.token_hex(8)
    raw = exchange(
        sidecar,
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Long: {secret}{'a' * 10000}\r\n\r\n".encode(),
    )
    status, _, body = split(raw)
    assert status == 431 and body["error"]["code"] == "header_too_long"
    assert secret.encode() not in raw


def test_http_0_9_is_refused(sidecar: Process) -> None:
    raw = exchange(sidecar, b"GET /v1/models\r\n\r\n")
    status, _, body = split(raw)
    assert status == 505 and body["error"]["code"] == "http_version_not_supported"
    assert raw.startswith(b"HTTP/1.")


def test_no_server_header_names_python_or_aiohttp(sidecar: Process) -> None:
    for path in ("/healthz", "/v1/models", "/nowhere"):
        _, headers, _ = call(sidecar.origin, path, method="GET")
        assert "server" not in headers, path


def test_a_foreign_host_is_refused_dns_rebinding(sidecar: Process) -> None:
    raw = exchange(sidecar, post("/v1/chat/completions", chat_body(), host="rebind.example:4000"))
    status, _, body = split(raw)
    assert status == 421 and body["error"]["code"] == "host_not_allowed"
    for host in ("localhost:4000", "127.0.0.1", "[::1]:4000"):
        raw = exchange(
            sidecar,
            b"GET /healthz HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n",
        )
        assert raw.startswith(b"HTTP/1.1 200"), host


def test_connections_past_the_cap_get_a_503(sidecar: Process) -> None:
    held = [socket.create_connection(address(sidecar), timeout=10) for _ in range(4)]
    try:
        time.sleep(0.2)
        raw = exchange(sidecar, b"")
        status, headers, body = split(raw)
        assert status == 503 and headers["retry-after"] == "1"
        assert body["error"]["code"] == "overloaded"
    finally:
        for connection in held:
            connection.close()


def test_the_access_log_leaves_the_query_string_out(sidecar: Process) -> None:
    secret = secrets.token_hex(12)
    assert call(sidecar.origin, f"/healthz?api-key={secret}", method="GET")[0] == 200
    log = sidecar.stop()
    assert "GET /healthz 200" in log and secret not in log


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "top_p": -Infinity}',
        b'{"model": "gpt-4o-mini", "model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "role": "system", "content": "x"}]}',
    ],
)
def test_ambiguous_json_is_refused_before_forwarding(
    sidecar: Process, state: standin.StandInState, body: bytes
) -> None:
    status, _, answer = call(sidecar.origin, "/v1/chat/completions", body)
    assert status == 400 and "ambiguous JSON" in answer["error"]["message"]
    assert state.received == []


@pytest.mark.parametrize("deployment", [".", ".."])
def test_an_azure_dot_segment_deployment_is_refused(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    deployment: str,
) -> None:
    def azure_glob(config: dict[str, Any]) -> None:
        config["routes"].insert(0, {"model": "*", "provider": "azure"})

    process = sidecar_process(tmp_path, provider, ca_file, azure_glob)
    try:
        status, _, answer = call(
            process.origin, "/v1/chat/completions", chat_body(model=deployment)
        )
        assert status == 400 and answer["error"]["code"] == "invalid_model"
        assert provider[1].received == []
    finally:
        process.stop()


def test_an_unreachable_provider_is_logged_with_the_request_id(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]

    def unreachable(config: dict[str, Any]) -> None:
        config["providers"]["openai"]["base_url"] = f"https://127.0.0.1:{dead}/v1"

    process = sidecar_process(tmp_path, provider, ca_file, unreachable)
    status, _, _ = call(
        process.origin, "/v1/chat/completions", chat_body(), {"x-request-id": "gone-1"}
    )
    log = process.stop()
    assert status == 502
    line = next(json.loads(line) for line in log.splitlines() if "gone-1" in line)
    assert line["code"] == "upstream_unreachable" and line["level"] == "WARNING"
