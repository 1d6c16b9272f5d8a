"""The whole cluster path, every part as it runs there, with a test helper as the kubelet:

`sidegate operator` (a process, logged in to kmock from a kubeconfig) signs team-a's bundle
and writes the credentials and admin token into the release namespace; its webhook injects a
labelled pod; the pod is created in the API server; a broker replica (logged in to kmock)
checks the pod's projected token with TokenReview and the pod spec, and delivers; the injected
sidecar runs as a process exactly as the pod says (args, env, downward API, the projected
token at its mount path), and enforces: the app calls it with the official SDK and only the
environment the injector gave it. A policy change reaches it through operator and broker. No
Secret of the application namespace ever holds a provider key, and the pre-delete cleanup
leaves no finalizer or Sidegate Secret behind."""

from __future__ import annotations

import asyncio
import base64
import copy
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonpatch
import openai
import pytest
import trustme

from sidegate import standin
from sidegate.operator import injection
from tests.conftest import assert_no_secrets, fake_key
from tests.helpers import admission, brokers, kubelet, unprivileged
from tests.helpers.http import call, chat_body
from tests.helpers.kubernetes import (
    CLEANUP_TOKEN,
    OPERATOR_TOKEN,
    POLICIES,
    RELEASE,
    SOURCES,
    Emulator,
    cluster,
    eventually,
    get,
    kubeconfig,
    policy,
    send,
    source_secret,
)
from tests.helpers.unprivileged import sidecar_python  # noqa: F401 - a fixture

ROOTS = ("/var/run/sidegate", "/var/lib/sidegate")  # the injector's mount points


def chart_config(
    broker_port: int, provider_port: int, ca_file: Path, ports: tuple[int, int]
) -> str:
    """What the chart's values give the operator (--sidecar-config): no keys, no files of
    them; the broker's address (here its test port), the providers."""
    origin = f"https://127.0.0.1:{provider_port}"
    port, admin_port = ports
    return f"""
listen: {{port: {port}}}
broker: {{url: "https://127.0.0.1:{broker_port}", wait_seconds: 1}}
admin: {{port: {admin_port}}}
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


def mount(k8s: Emulator, pod: dict[str, Any], root: Path) -> None:
    """The kubelet's part for the sidecar container: the projected token (TokenRequest for
    the pod, the volume's audience and lifetime) and the spool emptyDir at their mount paths,
    as root with the kubelet's owners and modes."""
    sidecar = next(c for c in pod["spec"]["initContainers"] if c["name"] == "sidegate")

    def issue(request: Mapping[str, Any], for_pod: Mapping[str, Any]) -> str:
        return k8s.issue_token(
            for_pod["metadata"]["namespace"],
            for_pod["spec"]["serviceAccountName"],
            pod=dict(for_pod),
            audiences=(request["audience"],),
            seconds=request["expirationSeconds"],
        )

    kubelet.mount(pod, sidecar, root, issue)


async def operator_process(
    url: str, tmp_path: Path, listener: Any, config: Path, broker_ca: Path, port: int
) -> asyncio.subprocess.Process:
    config_file = kubeconfig(tmp_path / "kubeconfig", url, OPERATOR_TOKEN)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidegate",
        "operator",
        f"--own-namespace={RELEASE}",
        f"--webhook-port={listener.port}",
        f"--webhook-cert={listener.certfile}",
        f"--webhook-key={listener.keyfile}",
        f"--sidecar-image={brokers.IMAGE}",
        f"--sidecar-config={config}",
        f"--broker-ca-file={broker_ca}",
        f"--sidecar-port={port}",
        env={**os.environ, "KUBECONFIG": str(config_file)},
        stderr=asyncio.subprocess.PIPE,
    )


def secret_values_outside_the_release_namespace(k8s: Emulator) -> list[str]:
    """Every value of every Secret the API server holds in any other namespace."""
    values = []
    for (resource, namespace, _name), obj in k8s.objects.items():
        if resource.plural == "secrets" and namespace != RELEASE and not obj.deleted:
            data = obj.raw.get("data") or {}
            values += [base64.b64decode(v).decode(errors="replace") for v in data.values() if v]
    return values


@pytest.fixture
def node() -> Iterator[Path]:
    """The node's disk for the pod: a directory the sidecar's user may enter (pytest's
    tmp_path is not), the kubelet's files in it owned as the kubelet owns them."""
    root = unprivileged.readable_directory("sidegate-node-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def sidecars() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.communicate(), 20)


async def test_operator_broker_and_injected_sidecar_enforce_with_no_key_in_the_namespace(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    server_cert: trustme.LeafCert,
    ca: trustme.CA,
    sidecars: list[asyncio.subprocess.Process],
    node: Path,
    sidecar_python: unprivileged.Python,  # noqa: F811
) -> None:
    provider_port, provider_state = provider
    key = fake_key()
    provider_state.accepted_keys.add(key)
    ports = (admission.free_port(), admission.free_port())
    (tmp_path / "webhook").mkdir()
    (tmp_path / "broker").mkdir()
    listener = admission.listener_for(tmp_path / "webhook", server_cert)
    root = node / "pod"
    # The provider stand-in's CA, as a file of the image would be: root's, world-readable.
    image_ca = node / "ca.pem"
    shutil.copyfile(ca_file, image_ca)

    async with (
        cluster() as (k8s, url),
        brokers.broker(
            url,
            server_cert,
            tmp_path / "broker",
            max_wait=5,
            sidecar_config=tmp_path / "sidecar.yaml",
            ca_file=ca_file,
        ) as replica,
    ):
        config = tmp_path / "sidecar.yaml"  # the broker reads it at each pod check
        config.write_text(chart_config(replica.api_port, provider_port, image_ca, ports))
        operator = await operator_process(url, tmp_path, listener, config, ca_file, ports[0])
        try:
            # The platform team: a provider key source, a policy for team-a's app.
            assert await send(k8s, "POST", SOURCES, source_secret(openai=key)) < 300
            grant = policy("gpt", ["gpt-4o-mini"])
            assert await send(k8s, "POST", POLICIES.format(ns="team-a"), grant) < 300
            for name in ("sidegate-bundle-team-a", "sidegate-credentials", "sidegate-admin-team-a"):
                await eventually(lambda n=name: get(k8s, f"{SOURCES}/{n}"), seconds=20)

            # The webhook injects; the API server stores the pod; the kubelet mounts.
            original = admission.pod({injection.LABEL: "true"})
            _response, ops = await admission.admit(listener, ca, original)
            patched = jsonpatch.apply_patch(copy.deepcopy(original), ops)
            pod = await brokers.create_pod(k8s, patched)
            mount(k8s, pod, root)

            sidecar = pod["spec"]["initContainers"][0]
            sidecar_env = environment(sidecar, pod)
            sidecar_env["SIDEGATE_CONFIG"] = relocate(sidecar_env["SIDEGATE_CONFIG"], root)
            # As the container's user (65532), not the test's root: the token is readable
            # only if the kubelet's owners and modes let that user read it.
            who = kubelet.identity(pod, sidecar)
            assert (who.uid, who.gid) == (injection.UID, injection.UID)
            process = await asyncio.create_subprocess_exec(
                *sidecar_python.argv("-m", "sidegate", *sidecar["args"]),
                env={"PATH": os.defpath, **sidecar_python.env, **sidecar_env},
                stderr=asyncio.subprocess.PIPE,
                user=who.uid,
                group=who.gid,
                extra_groups=list(who.groups),
            )
            sidecars.append(process)
            origin = f"http://127.0.0.1:{ports[0]}"

            async def ready() -> bool:
                assert process.returncode is None, "the sidecar exited"
                try:
                    answer = await asyncio.to_thread(call, origin, "/readyz", None, None, "GET")
                except OSError:
                    return False
                return answer[0] == 200

            await eventually(ready, seconds=30)

            # The app: only the environment the injector gave its container.
            app_env = environment(pod["spec"]["containers"][0], pod)
            assert key not in app_env.values()
            answer = await asyncio.to_thread(_chat, app_env, "gpt-4o-mini")
            assert answer == "echo: hi"
            assert provider_state.received[-1].key == key  # the sidecar added the real key
            with pytest.raises(openai.PermissionDeniedError):
                await asyncio.to_thread(_chat, app_env, "gpt-4o")  # not granted

            # The delivered admin token opens the sidecar's admin API.
            admin = await get(k8s, f"{SOURCES}/sidegate-admin-team-a")
            assert admin is not None
            admin_token = base64.b64decode(admin["data"]["token"]).decode()
            bearer = {"authorization": f"Bearer {admin_token}"}
            admin_origin = f"http://127.0.0.1:{ports[1]}"
            listed = await asyncio.to_thread(
                call, admin_origin, "/admin/v1/policies", None, bearer, "GET"
            )
            assert listed[0] == 200

            # A revocation: policy → signed bundle → broker → the running sidecar.
            revoke = {"spec": {"rules": [{"effect": "Deny", "models": ["gpt-4o-mini"]}]}}
            assert await send(k8s, "PATCH", POLICIES.format(ns="team-a") + "/gpt", revoke) < 300

            async def denied() -> bool:
                status = (
                    await asyncio.to_thread(call, origin, "/v1/chat/completions", chat_body())
                )[0]
                return status == 403

            await eventually(denied, seconds=15)

            # With the broker in use: no Secret outside the release namespace holds the key.
            assert not [v for v in secret_values_outside_the_release_namespace(k8s) if key in v]
        finally:
            operator.send_signal(signal.SIGTERM)
            _, operator_log = await asyncio.wait_for(operator.communicate(), 30)
        assert operator.returncode == 0, operator_log.decode()[-2000:]
        assert_no_secrets(operator_log.decode(), {key, admin_token})

        # Uninstall: the pre-delete cleanup (the operator is stopped already).
        cleanup = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidegate",
            "operator",
            f"--own-namespace={RELEASE}",
            "cleanup",
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig(tmp_path / "cleanup-config", url, CLEANUP_TOKEN)),
            },
            stderr=asyncio.subprocess.PIPE,
        )
        _, cleanup_log = await asyncio.wait_for(cleanup.communicate(), 60)
        assert cleanup.returncode == 0, cleanup_log.decode()[-2000:]
        found = await get(k8s, POLICIES.format(ns="team-a") + "/gpt")
        assert found is not None and not found["metadata"].get("finalizers")
        left = await get(k8s, SOURCES)
        assert [s["metadata"]["name"] for s in (left or {}).get("items", [])] == ["llm-keys"]
        assert not [v for v in secret_values_outside_the_release_namespace(k8s) if key in v]

    process.terminate()
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert_no_secrets(stderr.decode(), {key, admin_token})


def _chat(app_env: dict[str, str], model: str) -> str | None:
    with openai.OpenAI(
        base_url=app_env["OPENAI_BASE_URL"], api_key=app_env["OPENAI_API_KEY"], max_retries=0
    ) as client:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    return answer.choices[0].message.content
