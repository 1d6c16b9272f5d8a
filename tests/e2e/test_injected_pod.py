"""The whole cluster path, with a test helper as the kubelet: the operator (on kmock) writes a
namespace's bundle, credentials and admin token; its webhook injects an annotated pod; the
injected sidecar runs as a process exactly as the pod says (args, env, downward API, the
projected volumes at their mount paths); the app calls it with the official SDK and only the
environment the injector gave it."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonpatch
import openai
import pytest
import trustme

from sidegate import standin
from sidegate.operator import injection
from tests.conftest import fake_key
from tests.helpers import admission
from tests.helpers.http import call
from tests.helpers.kubelet import ProjectedVolume
from tests.helpers.kubernetes import (
    POLICIES,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    operator,
    policy,
    send,
    source_secret,
)

ROOTS = ("/var/run/sidegate", "/var/lib/sidegate")  # the injector's mount points


def sidecar_config(provider_port: int, ca_file: Path, port: int, admin_port: int) -> str:
    origin = f"https://127.0.0.1:{provider_port}"
    return f"""
listen: {{port: {port}}}
credentials: {{directory: /var/run/sidegate/credentials}}
policy: {{bundle_file: /var/run/sidegate/bundle/bundle.json}}
admin: {{port: {admin_port}, token_file: /var/run/sidegate/admin/token}}
audit: {{spool_directory: /var/lib/sidegate/spool}}
providers:
  openai: {{kind: openai, base_url: "{origin}/v1", tls: {{ca_file: "{ca_file}"}}}}
routes: [{{model: "gpt-*", provider: openai}}]
"""


def field(pod: dict[str, Any], path: str) -> str:
    value: Any = pod
    for part in path.split("."):
        value = value[part]
    return str(value)


def environment(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """What the kubelet puts in the container's environment (values and the downward API)."""
    found = {}
    for item in container.get("env", []):
        if "value" in item:
            found[item["name"]] = item["value"]
        else:
            found[item["name"]] = field(pod, item["valueFrom"]["fieldRef"]["fieldPath"])
    return found


def relocate(text: str, root: Path) -> str:
    """The pod's filesystem under ``root``: the test cannot write /var/run."""
    for prefix in ROOTS:
        text = text.replace(prefix, f"{root}{prefix}")
    return text


async def mount(k8s: Emulator, pod: dict[str, Any], root: Path) -> dict[str, ProjectedVolume]:
    """The kubelet's part: each of the sidecar's volumes at its mount path under ``root``."""
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "sidegate")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounted = {}
    for volume_mount in sidecar["volumeMounts"]:
        path = root / volume_mount["mountPath"].lstrip("/")
        volume = volumes[volume_mount["name"]]
        if "emptyDir" in volume:
            path.mkdir(parents=True)
            continue
        files: dict[str, str | bytes] = {}
        for source in volume["projected"]["sources"]:
            name = source["secret"]["name"]
            secret = await get(
                k8s, f"/api/v1/namespaces/{pod['metadata']['namespace']}/secrets/{name}"
            )
            assert secret is not None, f"{name} was not written"
            files.update({k: base64.b64decode(v) for k, v in secret["data"].items()})
        mounted[volume_mount["name"]] = ProjectedVolume(path)
        mounted[volume_mount["name"]].publish(files)
    return mounted


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        process.communicate(timeout=20)


def test_an_injected_pod_serves_its_app_with_keys_it_never_sees(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    processes: list[subprocess.Popen[str]],
) -> None:
    provider_port, provider_state = provider
    key = fake_key()
    provider_state.accepted_keys.add(key)
    port, admin_port = admission.free_port(), admission.free_port()
    spec = injection.SidecarSpec(
        image="registry.invalid/sidegate:0.1.0",
        config=sidecar_config(provider_port, ca_file, port, admin_port),
        port=port,
    )
    listener = admission.listener_for(tmp_path, server_cert)
    root = tmp_path / "pod"

    async def in_the_cluster() -> tuple[dict[str, Any], str]:
        """The operator writes the Secrets and injects the pod; the kubelet mounts them."""
        async with cluster() as (k8s, url), operator(url, listener, sidecar=spec):
            assert await send(k8s, "POST", SOURCES, source_secret(openai=key)) < 300
            assert (
                await send(
                    k8s, "POST", POLICIES.format(ns="team-a"), policy("gpt", ["gpt-4o-mini"])
                )
                < 300
            )
            for name in ("sidegate-bundle", "sidegate-credentials", "sidegate-admin"):
                await eventually(lambda n=name: get(k8s, f"/api/v1/namespaces/team-a/secrets/{n}"))

            original = admission.pod({injection.ANNOTATION: "true"})
            _response, ops = await admission.admit(listener, ca, original)
            pod = jsonpatch.apply_patch(copy.deepcopy(original), ops)
            await mount(k8s, pod, root)
            admin_secret = await get(k8s, "/api/v1/namespaces/team-a/secrets/sidegate-admin")
            assert admin_secret is not None
            return pod, base64.b64decode(admin_secret["data"]["token"]).decode()

    pod, admin_token = asyncio.run(in_the_cluster())
    sidecar = pod["spec"]["initContainers"][0]
    sidecar_env = environment(sidecar, pod)
    sidecar_env["SIDEGATE_CONFIG"] = relocate(sidecar_env["SIDEGATE_CONFIG"], root)
    process = subprocess.Popen(
        [sys.executable, "-m", "sidegate", *sidecar["args"]],
        env={"PATH": os.environ.get("PATH", ""), **sidecar_env},
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)

    def ready() -> bool:
        try:
            return call(f"http://127.0.0.1:{port}", "/readyz", method="GET")[0] == 200
        except OSError:
            assert process.poll() is None, "the sidecar exited"
            return False

    deadline = time.monotonic() + 20
    while not ready():
        assert time.monotonic() < deadline, "the injected sidecar never became ready"
        time.sleep(0.05)

    # The app: only the environment the injector gave its container.
    app_env = environment(pod["spec"]["containers"][0], pod)
    assert key not in app_env.values()
    client = openai.OpenAI(
        base_url=app_env["OPENAI_BASE_URL"], api_key=app_env["OPENAI_API_KEY"], max_retries=0
    )
    answer = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert answer.choices[0].message.content == "echo: hi"
    assert provider_state.received[-1].key == key  # the sidecar added the real key
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(
            model="gpt-4o",  # not granted to this service account
            messages=[{"role": "user", "content": "hi"}],
        )
    # The generated admin token opens the sidecar's admin API.
    status, _, _ = call(
        f"http://127.0.0.1:{admin_port}",
        "/admin/v1/policies",
        headers={"authorization": f"Bearer {admin_token}"},
        method="GET",
    )
    assert status == 200

    process.terminate()
    _, stderr = process.communicate(timeout=20)
    assert key not in stderr and admin_token not in stderr
