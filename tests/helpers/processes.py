"""Real processes for tests: `sidegate sidecar` and `redis-server`."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from tests.helpers.http import call


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclasses.dataclass
class Process:
    process: subprocess.Popen[str]
    origin: str

    def kill(self) -> str:
        """SIGKILL: no cleanup of any kind, as in a crash or an OOM kill."""
        self.process.kill()
        _, stderr = self.process.communicate(timeout=20)
        return stderr

    def stop(self) -> str:
        """SIGTERM, wait, and return what it wrote to stderr."""
        if self.process.poll() is None:
            self.process.terminate()
        _, stderr = self.process.communicate(timeout=20)
        return stderr


def start_sidecar(config: dict[str, Any], workdir: Path, name: str = "sidecar") -> Process:
    port = free_port()
    config = {**config, "listen": {**config.get("listen", {}), "port": port}}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "sidegate", "sidecar", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    origin = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if call(origin, "/readyz", method="GET")[0] == 200:
                return Process(process, origin)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"sidecar did not become ready:\n{process.communicate()[1]}")
        time.sleep(0.05)


@dataclasses.dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int
    password: str | None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start_redis(password: str | None = None) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; scripts/test installs it (apt-get)")
    port = free_port()
    arguments = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    if password:
        arguments += ["--requirepass", password]
    process = subprocess.Popen(arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(process, port, password)
    deadline = time.monotonic() + 10
    while True:
        try:
            with server.client() as client:
                if client.ping():
                    return server
        except redis.exceptions.ConnectionError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("redis-server did not answer PING")
        time.sleep(0.02)
