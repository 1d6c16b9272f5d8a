"""`sidegate broker` as the chart runs it: a process with the contract's flags, logged in from
a kubeconfig (here pointing at kmock's emulator), serving deliveries over TLS and its probes
over plain HTTP, stopping cleanly on SIGTERM with nothing secret in its JSON log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import trustme
import yaml

from sidegate.policy import signing
from tests.conftest import fake_key
from tests.helpers import brokers
from tests.helpers.kubernetes import BROKER_TOKEN, cluster, eventually, kubeconfig
from tests.helpers.processes import free_port
from tests.policies import allow, policy


async def test_the_broker_command_serves_deliveries_and_stops(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA
) -> None:
    certfile, keyfile = brokers.write_cert(server_cert, tmp_path)
    api_port, probe_port = free_port(), free_port()
    key = signing.generate_private_key()
    trusted = brokers.public_keys(key)
    keys = {"openai": fake_key()}
    async with cluster() as (k8s, url):
        for obj in (
            brokers.public_configmap(trusted),
            brokers.credentials_secret(keys),
            brokers.bundle_secret(
                "team-a", brokers.signed_bundle("team-a", [policy("p", rules=[allow("*")])], key)
            ),
        ):
            await brokers.put(k8s, obj)
        # Injected with the broker's CA, as the operator does: the broker holds it to its own.
        ca_file, sidecar_config = tmp_path / "ca.crt", tmp_path / "sidecar.yaml"
        ca_pem = ca.cert_pem.bytes().decode()
        ca_file.write_text(ca_pem, encoding="utf-8")
        sidecar_config.write_text(yaml.safe_dump(brokers.CHART_CONFIG), encoding="utf-8")
        injected = brokers.injected_pod("team-a", "app-1", trusted, broker_ca_pem=ca_pem)
        pod = await brokers.create_pod(k8s, injected)
        token = k8s.issue_token("team-a", "app", pod=pod)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidegate",
            "broker",
            f"--namespace={brokers.RELEASE}",
            f"--listen-port={api_port}",
            f"--certfile={certfile}",
            f"--keyfile={keyfile}",
            f"--probe-port={probe_port}",
            "--audience=sidegate",
            f"--sidecar-image={brokers.IMAGE}",
            f"--sidecar-config={sidecar_config}",
            f"--ca-file={ca_file}",
            "--max-wait=5",
            "--log-level=INFO",
            "--log-format=json",
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig(tmp_path / "config", url, BROKER_TOKEN)),
            },
            stderr=asyncio.subprocess.PIPE,
        )
        try:

            async def probe(path: str) -> bool:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{probe_port}{path}") as answer,
                ):
                    return answer.status == 200

            assert await eventually(lambda: probe("/readyz"), seconds=20)
            assert await probe("/healthz")
            connector = aiohttp.TCPConnector(ssl=brokers.client_context(ca))
            async with aiohttp.ClientSession(connector=connector) as session:
                status, answer = await brokers.deliver(session, api_port, token)
                assert status == 200 and answer["credentials"] == keys
                refused, _ = await brokers.deliver(session, api_port, token + "x")
                assert refused == 401
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = stderr.decode()
    assert process.returncode == 0, log[-2000:]
    assert keys["openai"] not in log and token not in log
    for line in log.splitlines():
        json.loads(line)  # every line is a JSON log record
