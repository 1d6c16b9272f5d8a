"""SIGTERM: the sidecar keeps serving through its drain period, then stops accepting, lets
requests in flight finish within one grace period, and cuts what remains with an error the
client sees and the audit records as the sidecar's cut."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from sidegate import standin
from tests.helpers.http import call, chat_body
from tests.helpers.sidecars import address, post, sidecar_process

DRAIN, GRACE = 2.0, 2.0


def draining(spool: Path) -> Any:
    def configure(config: dict[str, Any]) -> None:
        config["listen"] = {"drain_seconds": DRAIN, "shutdown_grace_seconds": GRACE}
        config["audit"] = {"spool_directory": str(spool), "flush_interval_ms": 1}

    return configure


def audit_events(spool: Path) -> list[dict[str, Any]]:
    events = []
    for segment in sorted(spool.rglob("*.jsonl")):
        for line in segment.read_bytes().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return events


def open_stream(origin_address: tuple[str, int], words: int) -> socket.socket:
    body = chat_body(stream=True, messages=[{"role": "user", "content": "w " * words}])
    connection = socket.create_connection(origin_address, timeout=30)
    connection.sendall(post("/v1/chat/completions", body))
    received = b""
    while b"data:" not in received:
        received += connection.recv(65536)
    return connection


def read_to_close(connection: socket.socket) -> bytes:
    received = b""
    with connection:
        while chunk := connection.recv(65536):
            received += chunk
    return received


def test_sigterm_drains_then_cuts_with_an_error_the_audit_calls_the_sidecars(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    spool = tmp_path / "spool"
    state = provider[1]
    state.stream_delay = 0.2  # a stream of 100 words lasts ~20 s: longer than drain + grace
    sidecar = sidecar_process(tmp_path, provider, ca_file, draining(spool))
    stream = open_stream(address(sidecar), 100)
    signalled = time.monotonic()
    sidecar.process.terminate()

    time.sleep(DRAIN / 2)  # draining: new connections are still accepted and served
    assert call(sidecar.origin, "/v1/chat/completions", chat_body())[0] == 200
    status, _, ready = call(sidecar.origin, "/readyz", method="GET")
    assert status == 503 and ready["draining"] is True

    time.sleep(DRAIN / 2 + 0.5)  # drain over: the listener is closed
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address(sidecar), timeout=2).close()

    received = read_to_close(stream)
    cut_after = time.monotonic() - signalled
    assert DRAIN + GRACE - 0.5 < cut_after < DRAIN + GRACE + 3  # one grace period, not two
    assert b"sidecar_shutdown" in received and b"[DONE]" not in received
    assert not received.endswith(b"0\r\n\r\n")  # no terminating chunk: the body is incomplete
    log = sidecar.process.communicate(timeout=20)[1]
    assert sidecar.process.returncode == 0 and "Traceback" not in log

    statuses = [
        (e["outcome"]["status"], e["outcome"]["reason"])
        for e in audit_events(spool)
        if e.get("action") == "llm.chat.completions"
    ]
    assert (503, "sidecar_shutdown") in statuses and (200, "allowed") in statuses
    assert all(status != 499 for status, _ in statuses)


def test_a_stream_that_ends_within_the_grace_period_completes(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    spool = tmp_path / "spool"
    provider[1].stream_delay = 0.2  # ~12 words: ~2.5 s, inside drain + grace
    sidecar = sidecar_process(tmp_path, provider, ca_file, draining(spool))
    stream = open_stream(address(sidecar), 10)
    sidecar.process.terminate()
    received = read_to_close(stream)
    assert received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    sidecar.process.communicate(timeout=20)
    assert sidecar.process.returncode == 0


def test_a_second_signal_cuts_at_once(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    provider[1].stream_delay = 0.2
    sidecar = sidecar_process(tmp_path, provider, ca_file, draining(tmp_path / "spool"))
    stream = open_stream(address(sidecar), 100)
    sidecar.process.terminate()
    time.sleep(0.5)
    signalled = time.monotonic()
    sidecar.process.send_signal(signal.SIGINT)  # a second Ctrl-C at a terminal
    received = read_to_close(stream)
    assert time.monotonic() - signalled < DRAIN  # neither the drain nor the grace waited out
    assert b"sidecar_shutdown" in received
    log = sidecar.process.communicate(timeout=20)[1]
    assert sidecar.process.returncode == 0 and "Traceback" not in log
