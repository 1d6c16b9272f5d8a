"""Admission calls as the API server makes them: an AdmissionReview over verified HTTPS to
the operator's webhook server, answered with a base64 JSON patch."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import trustme

from sidegate.operator import running
from sidegate.operator.handlers import webhook
from tests.helpers.kubernetes import eventually


def listener_for(directory: Path, cert: trustme.LeafCert) -> running.WebhookListener:
    certfile, keyfile = directory / "tls.crt", directory / "tls.key"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    return running.WebhookListener(free_port(), certfile, keyfile, addr="127.0.0.1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pod(
    labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "app-7d9f",
            "namespace": "team-a",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {
            "serviceAccountName": "app",
            "containers": [
                {
                    "name": "app",
                    "image": "registry.invalid/app:1",
                    "env": [{"name": "LOG_LEVEL", "value": "debug"}],
                }
            ],
        },
    }


def review(
    obj: dict[str, Any],
    operation: str = "CREATE",
    subresource: str | None = None,
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it: for a pod CREATE, an ephemeral
    containers UPDATE (object: the pod as it would become, oldObject: as it is) or an exec
    CONNECT (object: the PodExecOptions)."""
    kind = "PodExecOptions" if subresource == "exec" else "Pod"
    options = {"CREATE": "CreateOptions", "UPDATE": "UpdateOptions"}.get(operation)
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": {"group": "", "version": "v1", "kind": kind},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "requestKind": {"group": "", "version": "v1", "kind": kind},
        "requestResource": {"group": "", "version": "v1", "resource": "pods"},
        "name": (obj.get("metadata") or {}).get("name", "app-7d9f"),
        "namespace": "team-a",
        "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
        "object": obj,
        "oldObject": old,
        "dryRun": False,
    }
    if subresource:
        request["subResource"] = subresource
        request["requestSubResource"] = subresource
    if options:
        request["options"] = {"apiVersion": "meta.k8s.io/v1", "kind": options}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


async def listening(port: int) -> None:
    """kopf starts its webhook server once it has looked at the API's resources."""

    async def accepts() -> bool:
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    await eventually(accepts, seconds=10)


async def admit(
    listener: running.WebhookListener,
    ca: trustme.CA,
    obj: dict[str, Any],
    allowed: bool = True,
    *,
    path: str = webhook.HANDLER_ID,
    operation: str = "CREATE",
    subresource: str | None = None,
    old: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One admission call as the API server makes it: HTTPS, verified against the CA."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    await listening(listener.port)
    sent = review(obj, operation, subresource, old)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://127.0.0.1:{listener.port}/{path}",
            json=sent,
            ssl=context,
        ) as answer,
    ):
        assert answer.status == 200
        response = (await answer.json())["response"]
    assert response["uid"] == sent["request"]["uid"] and response["allowed"] is allowed
    ops = json.loads(base64.b64decode(response["patch"])) if "patch" in response else []
    if ops:
        assert response["patchType"] == "JSONPatch"
    return response, ops
