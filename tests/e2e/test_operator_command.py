"""`sidegate operator` as the chart runs it: a process with the chart's flags, logged in from a
kubeconfig (here pointing at kmock's emulator), serving its probe and the webhook over TLS."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import trustme
import yaml

from sidegate.operator import injection
from tests.conftest import fake_key
from tests.helpers import admission
from tests.helpers.kubernetes import (
    POLICIES,
    SOURCES,
    cluster,
    eventually,
    get,
    policy,
    send,
    source_secret,
)


def kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "operator", "user": {}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


@pytest.mark.asyncio
async def test_the_operator_command_reconciles_injects_and_stops(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA
) -> None:
    listener = admission.listener_for(tmp_path, server_cert)
    health = admission.free_port()
    sidecar_config = tmp_path / "sidecar.yaml"
    sidecar_config.write_text("listen: {port: 4000}\n")
    key = fake_key()
    async with cluster() as (k8s, url):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidegate",
            "operator",
            "--log-level=DEBUG",
            f"--liveness=http://127.0.0.1:{health}/healthz",
            "--own-namespace=sidegate-system",
            "--overlap=60",
            f"--webhook-port={listener.port}",
            f"--webhook-cert={listener.certfile}",
            f"--webhook-key={listener.keyfile}",
            "--sidecar-image=registry.invalid/sidegate:0.1.0",
            f"--sidecar-config={sidecar_config}",
            '--sidecar-resources={"requests": {"cpu": "10m"}}',
            env={**os.environ, "KUBECONFIG": str(kubeconfig(tmp_path / "config", url))},
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert await send(k8s, "POST", SOURCES, source_secret(openai=key)) < 300
            created = await send(
                k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"])
            )
            assert created < 300
            for name in ("sidegate-bundle", "sidegate-credentials", "sidegate-admin"):
                await eventually(
                    lambda n=name: get(k8s, f"/api/v1/namespaces/team-a/secrets/{n}"), seconds=20
                )

            async def probe() -> bool:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{health}/healthz") as answer,
                ):
                    return answer.status == 200

            assert await eventually(probe, seconds=10)

            _response, ops = await admission.admit(
                listener, ca, admission.pod({injection.ANNOTATION: "true"})
            )
            added = next(op["value"] for op in ops if op["path"] == "/spec/initContainers")
            assert added[0]["resources"] == {"requests": {"cpu": "10m"}}
            assert added[0]["image"] == "registry.invalid/sidegate:0.1.0"
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = stderr.decode()
    assert process.returncode == 0, log[-2000:]
    assert key not in log
    for line in log.splitlines():
        json.loads(line)  # every line is a JSON log record
