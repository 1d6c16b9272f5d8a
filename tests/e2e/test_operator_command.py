"""`sidegate operator` as the chart runs it: a process with the chart's flags, logged in from a
kubeconfig (here pointing at kmock's emulator), serving its probe and the webhook over TLS;
and `sidegate operator cleanup` as the chart's pre-delete hook runs it."""

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
    CLEANUP_TOKEN,
    OPERATOR_TOKEN,
    POLICIES,
    SOURCES,
    cluster,
    eventually,
    get,
    kubeconfig,
    policy,
    send,
    source_secret,
)


@pytest.mark.asyncio
async def test_the_operator_command_reconciles_injects_and_stops(
    tmp_path: Path, server_cert: trustme.LeafCert, ca: trustme.CA
) -> None:
    listener = admission.listener_for(tmp_path, server_cert)
    health = admission.free_port()
    sidecar_config = tmp_path / "sidecar.yaml"
    sidecar_config.write_text(  # a config the sidecar accepts: the operator checks it
        "listen: {port: 4000}\nbroker: {url: https://broker:8443}\n"
        "providers: {openai: {kind: openai}}\nroutes: [{model: gpt-*, provider: openai}]\n"
    )
    broker_ca = tmp_path / "broker-ca.crt"
    broker_ca.write_text(ca.cert_pem.bytes().decode())
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
            f"--broker-ca-file={broker_ca}",
            '--sidecar-resources={"requests": {"cpu": "10m"}}',
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig(tmp_path / "config", url, OPERATOR_TOKEN)),
            },
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert await send(k8s, "POST", SOURCES, source_secret(openai=key)) < 300
            created = await send(
                k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-*"])
            )
            assert created < 300
            for name in (
                "sidegate-bundle-team-a",
                "sidegate-credentials",
                "sidegate-admin-team-a",
                "sidegate-signing",
            ):
                await eventually(lambda n=name: get(k8s, f"{SOURCES}/{n}"), seconds=20)

            async def probe() -> bool:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"http://127.0.0.1:{health}/healthz") as answer,
                ):
                    return answer.status == 200

            assert await eventually(probe, seconds=10)

            _response, ops = await admission.admit(
                listener, ca, admission.pod({injection.LABEL: "true"})
            )
            added = next(op["value"] for op in ops if op["path"] == "/spec/initContainers")
            assert added[0]["resources"] == {"requests": {"cpu": "10m"}}
            assert added[0]["image"] == "registry.invalid/sidegate:0.1.0"
            config = yaml.safe_load(added[0]["env"][0]["value"])
            assert config["broker"]["ca_pem"] == ca.cert_pem.bytes().decode()
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
    log = stderr.decode()
    assert process.returncode == 0, log[-2000:]
    assert key not in log
    for line in log.splitlines():
        json.loads(line)  # every line is a JSON log record


async def run_cleanup(url: str, tmp_path: Path, *extra: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidegate",
        "operator",
        "--own-namespace=sidegate-system",
        "cleanup",
        *extra,
        env={
            **os.environ,
            "KUBECONFIG": str(kubeconfig(tmp_path / "cleanup-config", url, CLEANUP_TOKEN)),
        },
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


DEPLOYMENT = "/apis/apps/v1/namespaces/sidegate-system/deployments/sidegate-operator"


@pytest.mark.asyncio
async def test_cleanup_stops_the_operator_and_leaves_no_finalizer_or_secret(
    tmp_path: Path,
) -> None:
    """What a pre-delete hook leaves: the operator scaled to 0 (waited for), no RBACPolicy
    holding its finalizer, none of its Secrets or ConfigMaps; the sources kept."""
    key = fake_key()
    async with cluster() as (k8s, url):
        # The operator as a process (kopf stopped inside the test's loop leaves kmock's
        # server unanswering), stopped below by the test playing the Deployment controller.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidegate",
            "operator",
            "--own-namespace=sidegate-system",
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig(tmp_path / "config", url, OPERATOR_TOKEN)),
            },
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await send(k8s, "POST", SOURCES, source_secret(openai=key))
            for namespace in ("team-a", "team-b"):
                created = policy("p", ["*"], namespace)
                await send(k8s, "POST", POLICIES.format(ns=namespace), created)
            for name in ("sidegate-bundle-team-b", "sidegate-credentials", "sidegate-admin-team-a"):
                await eventually(lambda n=name: get(k8s, f"{SOURCES}/{n}"), seconds=20)

            async def finalized() -> bool:
                found = await get(k8s, POLICIES.format(ns="team-b") + "/p")
                meta = (found or {}).get("metadata", {})
                return "sidegate.io/finalizer" in meta.get("finalizers", [])

            await eventually(finalized, seconds=20)
        except BaseException:
            process.kill()
            await process.communicate()
            raise
        # The operator's Deployment, and the test as its controller: once the spec says 0
        # replicas, the status follows (a real controller omits the zero count).
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "sidegate-operator", "namespace": "sidegate-system"},
            "spec": {"replicas": 1},
            "status": {"replicas": 1, "observedGeneration": 1},
        }
        assert await send(k8s, "POST", DEPLOYMENT.rsplit("/", 1)[0], deployment) < 300

        async def controller() -> None:
            while True:
                found = await get(k8s, DEPLOYMENT)
                if found and found["spec"]["replicas"] == 0:
                    process.send_signal(signal.SIGTERM)
                    await asyncio.wait_for(process.communicate(), 30)
                    generation = found["metadata"]["generation"]
                    status = {"status": {"observedGeneration": generation, "replicas": None}}
                    await send(k8s, "PATCH", DEPLOYMENT, status)
                    return
                await asyncio.sleep(0.05)

        playing = asyncio.create_task(controller())
        code, log = await run_cleanup(url, tmp_path, "--stop-deployment=sidegate-operator")
        await playing
        assert code == 0, log[-2000:]
        for namespace in ("team-a", "team-b"):
            found = await get(k8s, POLICIES.format(ns=namespace) + "/p")
            assert found is not None and not found["metadata"].get("finalizers")
        left = await get(k8s, SOURCES)
        assert [s["metadata"]["name"] for s in (left or {}).get("items", [])] == ["llm-keys"]
        maps = await get(k8s, "/api/v1/namespaces/sidegate-system/configmaps")
        assert not (maps or {}).get("items")
        # Run twice (a retried hook): nothing left to do, still a success.
        code, log = await run_cleanup(url, tmp_path)
        assert code == 0, log[-2000:]
        assert key not in log
