"""The few Kubernetes API calls the operator makes itself (kopf covers watching and status):
read, create and patch a Secret. Plain aiohttp against the API server kopf logged in to."""

from __future__ import annotations

import ssl
from typing import Any

import aiohttp
import kopf


class SecretsClient:
    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self._server = info.server.rstrip("/")
        headers = {"Content-Type": "application/json"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        context: ssl.SSLContext | bool = (
            False
            if info.insecure
            else ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
        )
        if self._server.startswith("http://"):
            context = False  # only the test emulator is plain HTTP; kopf's own client agrees
        self._session = aiohttp.ClientSession(
            headers=headers, connector=aiohttp.TCPConnector(ssl=context)
        )

    def _url(self, namespace: str, name: str | None = None) -> str:
        base = f"{self._server}/api/v1/namespaces/{namespace}/secrets"
        return f"{base}/{name}" if name else base

    async def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        async with self._session.get(self._url(namespace, name)) as answer:
            if answer.status == 404:
                return None
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"reading secret {namespace}/{name}: HTTP {answer.status}", delay=5
                )
            found: dict[str, Any] = await answer.json()
            return found

    async def apply(self, secret: dict[str, Any]) -> None:
        """Create, or merge-patch when it exists (a 409 on create means someone was faster)."""
        namespace, name = secret["metadata"]["namespace"], secret["metadata"]["name"]
        async with self._session.post(self._url(namespace), json=secret) as answer:
            if answer.status < 400:
                return
            if answer.status != 409:
                raise kopf.TemporaryError(
                    f"creating secret {namespace}/{name}: HTTP {answer.status}", delay=5
                )
        async with self._session.patch(
            self._url(namespace, name),
            json=secret,
            headers={"Content-Type": "application/merge-patch+json"},
        ) as answer:
            if answer.status >= 400:
                raise kopf.TemporaryError(
                    f"patching secret {namespace}/{name}: HTTP {answer.status}", delay=5
                )

    async def close(self) -> None:
        await self._session.close()
