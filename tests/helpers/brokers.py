"""The broker's world in tests: the release namespace's objects as the operator writes them
(signed bundles, the credentials Secret, admin tokens, the published keys), injected pods as
the webhook makes them, and a broker replica logged in to the emulator."""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import json
import secrets
import ssl
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import trustme
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from sidegate.broker import kube, running
from sidegate.operator import injection
from sidegate.policy import bundle, models, signing
from tests.conftest import fake_key
from tests.helpers.kubernetes import BROKER_TOKEN, Emulator, cluster, eventually, send

RELEASE = "sidegate-system"
IMAGE = "sidegate:test"
SECRETS = f"/api/v1/namespaces/{RELEASE}/secrets"
CONFIGMAPS = f"/api/v1/namespaces/{RELEASE}/configmaps"


def _data(values: dict[str, str]) -> dict[str, str]:
    return {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}


def _secret(
    name: str, data: dict[str, str], labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": RELEASE,
            "labels": {"app.kubernetes.io/managed-by": "sidegate-operator", **(labels or {})},
        },
        "data": data,
    }


def signed_bundle(
    namespace: str,
    policies: list[models.RBACPolicy],
    key: ed25519.Ed25519PrivateKey,
    serial: int | None = None,
) -> bytes:
    return signing.sign(
        bundle.dumps(bundle.to_bundle(policies)),
        namespace=namespace,
        serial=serial if serial is not None else int(time.time() * 1000),
        issued_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        private_key=key,
    )


def bundle_secret(namespace: str, envelope: bytes) -> dict[str, Any]:
    return _secret(
        f"sidegate-bundle-{namespace}",
        {"bundle.json": base64.b64encode(envelope).decode()},
        {"sidegate.io/bundle-for": namespace},
    )


def credentials_secret(keys: dict[str, str]) -> dict[str, Any]:
    return _secret("sidegate-credentials", _data(keys))


def admin_secret(namespace: str, token: str, previous: str | None = None) -> dict[str, Any]:
    values = {"token": token, **({"token.previous": previous} if previous else {})}
    return _secret(
        f"sidegate-admin-{namespace}", _data(values), {"sidegate.io/admin-for": namespace}
    )


def redis_secret(url: str, password: str | None = None) -> dict[str, Any]:
    values = {"url": url, **({"password": password} if password else {})}
    return _secret("sidegate-redis", _data(values))


def public_keys(*keys: ed25519.Ed25519PrivateKey) -> list[str]:
    return [signing.encode_public_key(k.public_key()) for k in keys]


def public_configmap(trusted: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "sidegate-signing-public", "namespace": RELEASE},
        "data": {"trusted_keys": json.dumps(trusted)},
    }


async def put(k8s: Emulator, obj: dict[str, Any]) -> None:
    """Create the object, or replace its data when it exists (as the operator's apply)."""
    plural = "secrets" if obj["kind"] == "Secret" else "configmaps"
    base = f"/api/v1/namespaces/{obj['metadata']['namespace']}/{plural}"
    status = await send(k8s, "POST", base, obj)
    if status == 409:
        status = await send(k8s, "PATCH", f"{base}/{obj['metadata']['name']}", obj)
    assert status < 400, status


# The chart's sidecar config in these tests: what the operator completes and injects, and
# what the broker (``--sidecar-config``) compares a pod's config with.
CHART_CONFIG: dict[str, Any] = {
    "broker": {"url": "https://broker.invalid:8443"},
    "providers": {"openai": {"kind": "openai"}},
    "routes": [{"model": "gpt-*", "provider": "openai"}],
}


def sidecar_spec(trusted: list[str], **options: Any) -> injection.SidecarSpec:
    return injection.SidecarSpec(
        image=IMAGE,
        config=yaml.safe_dump(CHART_CONFIG),
        trusted_keys=tuple(trusted),
        **options,
    )


def sidecar_config(trusted: list[str]) -> str:
    """The config the injector writes for a pod made while ``trusted`` were published."""
    return injection.sidecar_config(sidecar_spec(trusted))


def injected_pod(namespace: str, name: str, trusted: list[str], **options: Any) -> dict[str, Any]:
    """A pod as the webhook leaves it (the real injector): the native sidecar alone mounts
    the token volume."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceAccountName": "app", "containers": [{"name": "app", "image": "app:1"}]},
    }
    pod = injection.apply(pod, injection.inject(pod, sidecar_spec(trusted, **options)))
    pod["status"] = {"phase": "Running"}
    return pod


def altered(pod: dict[str, Any], change: str) -> dict[str, Any]:
    """The injected pod with one thing wrong (what an attacker who can create pods does)."""
    pod = copy.deepcopy(pod)
    spec = pod["spec"]
    sidecar, app = spec["initContainers"][0], spec["containers"][0]
    if change == "app-mounts-token":
        app["volumeMounts"] = [{"name": "sidegate-token", "mountPath": "/t"}]
    elif change == "app-has-own-sidegate-token":
        spec["volumes"].append(
            {
                "name": "mine",
                "projected": {
                    "sources": [{"serviceAccountToken": {"audience": "sidegate", "path": "t"}}]
                },
            }
        )
        app["volumeMounts"] = [{"name": "mine", "mountPath": "/t"}]
    elif change == "other-image":
        sidecar["image"] = "attacker/sidegate:evil"
    elif change == "other-command":
        sidecar["command"] = ["/bin/sh", "-c", "cat /var/run/sidegate/token/token"]
    elif change == "shares-processes":
        spec["shareProcessNamespace"] = True
    elif change == "host-pid":
        spec["hostPID"] = True
    elif change == "other-trusted-key":
        other = public_keys(signing.generate_private_key())
        sidecar["env"][0]["value"] = sidecar_config(other)
    elif change == "no-sidecar":
        del spec["initContainers"]
    elif change == "ephemeral-targets-sidecar":
        spec["ephemeralContainers"] = [
            {"name": "debug", "image": "busybox", "targetContainerName": "sidegate"}
        ]
    else:
        raise ValueError(change)
    return pod


async def create_pod(k8s: Emulator, pod: dict[str, Any]) -> dict[str, Any]:
    namespace = pod["metadata"]["namespace"]
    status = await send(k8s, "POST", f"/api/v1/namespaces/{namespace}/pods", pod)
    assert status < 400, status
    found = k8s.pod(namespace, pod["metadata"]["name"])
    assert found is not None
    return found


def write_cert(cert: trustme.LeafCert, directory: Path) -> tuple[Path, Path]:
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return certfile, keyfile


@contextlib.asynccontextmanager
async def broker(
    url: str, cert: trustme.LeafCert, directory: Path, **options: Any
) -> AsyncIterator[running.Running]:
    certfile, keyfile = write_cert(cert, directory)
    # The chart's sidecar config, apart from the directory the tests look into.
    with tempfile.TemporaryDirectory() as chart:
        if "sidecar_config" not in options:
            options["sidecar_config"] = Path(chart) / "sidecar.yaml"
            options["sidecar_config"].write_text(yaml.safe_dump(CHART_CONFIG), encoding="utf-8")
        settings = running.Options(
            namespace=RELEASE,
            certfile=certfile,
            keyfile=keyfile,
            sidecar_image=IMAGE,
            listen_port=0,
            probe_port=0,
            host="127.0.0.1",
            **options,
        )
        # Its requests carry its token: the emulator holds them to the chart's RBAC.
        login = kube.Login(url, token=lambda: BROKER_TOKEN)
        async with running.started(settings, login) as replica:
            yield replica


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def deliver(
    session: aiohttp.ClientSession,
    port: int,
    token: str,
    after: str = "",
    wait: float = 0,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with session.get(
        f"https://127.0.0.1:{port}/v1/delivery",
        params={"after": after, "wait": str(wait)},
        headers={"Authorization": f"Bearer {token}", **(headers or {})},
    ) as answer:
        body = await answer.read()
        return answer.status, json.loads(body) if body else None


@dataclasses.dataclass
class World:
    """kmock with the release namespace's objects for team-a, and one broker replica."""

    k8s: Emulator
    url: str
    replica: running.Running
    session: aiohttp.ClientSession
    key: ed25519.Ed25519PrivateKey
    trusted: list[str]
    keys: dict[str, str]
    admin_token: str
    replica_context: contextlib.AsyncExitStack

    async def stop_broker(self) -> None:
        await self.replica_context.aclose()

    async def deliver(self, token: str, after: str = "", wait: float = 0) -> tuple[int, Any]:
        return await deliver(self.session, self.replica.api_port, token, after, wait)

    async def pod_token(self, namespace: str = "team-a", name: str = "app-1", **token: Any) -> str:
        pod = await create_pod(self.k8s, injected_pod(namespace, name, self.trusted))
        return self.k8s.issue_token(namespace, "app", pod=pod, **token)

    async def publish_bundle(
        self,
        policies: list[models.RBACPolicy],
        *,
        namespace: str = "team-a",
        key: ed25519.Ed25519PrivateKey | None = None,
        serial: int | None = None,
    ) -> bytes:
        envelope = signed_bundle(namespace, policies, key or self.key, serial)
        await put(self.k8s, bundle_secret(namespace, envelope))
        return envelope


@contextlib.asynccontextmanager
async def world(
    directory: Path,
    ca: trustme.CA,
    cert: trustme.LeafCert,
    policies: list[models.RBACPolicy] | None = None,
    **options: Any,
) -> AsyncIterator[World]:
    async with cluster() as (k8s, url):
        key = signing.generate_private_key()
        trusted = public_keys(key)
        keys = {"openai": fake_key(), "anthropic": fake_key("sk-ant-test-")}
        admin_token = secrets.token_urlsafe(24)
        if policies is None:
            policies = [
                models.RBACPolicy.model_validate(
                    {
                        "apiVersion": "sidegate.io/v1alpha1",
                        "kind": "RBACPolicy",
                        "metadata": {"name": "p", "namespace": "team-a"},
                        "spec": {
                            "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                            "rules": [{"effect": "Allow", "models": ["gpt-*"]}],
                        },
                    }
                )
            ]
        for obj in (
            public_configmap(trusted),
            credentials_secret(keys),
            bundle_secret("team-a", signed_bundle("team-a", policies, key)),
            admin_secret("team-a", admin_token),
        ):
            await put(k8s, obj)
        async with contextlib.AsyncExitStack() as replica_context:
            replica = await replica_context.enter_async_context(
                broker(url, cert, directory, **options)
            )
            await eventually(lambda: ready(replica))
            connector = aiohttp.TCPConnector(ssl=client_context(ca))
            async with aiohttp.ClientSession(connector=connector) as session:
                yield World(
                    k8s, url, replica, session, key, trusted, keys, admin_token, replica_context
                )


async def ready(replica: running.Running) -> bool:
    return replica.broker.contents.ready and replica.broker.contents.namespaces == 1
