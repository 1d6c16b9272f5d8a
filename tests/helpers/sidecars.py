"""`sidegate sidecar` as a real process in front of a stand-in provider, for what is about
the wire: raw sockets, signals, memory."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidegate import standin
from tests.conftest import base_config, fake_key
from tests.helpers.processes import Process, start_sidecar


def sidecar_process(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    configure: Callable[[dict[str, Any]], None] | None = None,
) -> Process:
    port, state = provider
    credentials = tmp_path / "credentials"
    credentials.mkdir(exist_ok=True)
    for name in ("openai", "anthropic", "azure", "compat"):
        key = fake_key()
        (credentials / name).write_text(key)
        state.accepted_keys.add(key)
    config: dict[str, Any] = base_config(port, ca_file, credentials)
    if configure is not None:
        configure(config)
    return start_sidecar(config, tmp_path)


def address(process: Process) -> tuple[str, int]:
    host, port = process.origin.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def exchange(process: Process, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the sidecar closes the connection (or the timeout)."""
    with socket.create_connection(address(process), timeout=timeout) as connection:
        connection.sendall(raw)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


def post(path: str, body: bytes, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body
