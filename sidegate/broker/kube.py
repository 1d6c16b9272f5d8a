"""The broker's Kubernetes API calls: list and watch its own namespace's Secrets and
ConfigMaps, create a TokenReview, get a pod. Plain aiohttp against the API server.

In a pod the broker logs in with its service account, whose token the kubelet rotates: the
token file is read again before each call, as client-go does. Outside a cluster it uses the
kubeconfig (through kopf's reader, which the operator already depends on).
"""

from __future__ import annotations

import dataclasses
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# One watch event is one JSON line: a Secret holds at most 1 MiB of data, ~1.4 MB as JSON.
# (aiohttp's line reader stops at 512 KiB, so the stream is split here.)
_MAX_EVENT_BYTES = 16 * 1024 * 1024


class ApiError(Exception):
    """The API server answered an error, or could not be reached. The message holds the
    status and the path, never a token."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Login:
    """Where the API server is and how to authenticate to it."""

    server: str
    token: Callable[[], str | None] = lambda: None
    ssl_context: ssl.SSLContext | None = None  # None: plain HTTP (the test emulator only)


def _read_token(path: Path) -> Callable[[], str | None]:
    def read() -> str | None:
        try:
            return path.read_text(encoding="utf-8").strip() or None
        except OSError:
            return None

    return read


def in_cluster(environ: Mapping[str, str] | None = None) -> Login | None:
    environ = environ if environ is not None else os.environ
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = SERVICE_ACCOUNT / "token"
    if not host or not port or not token.exists():
        return None
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt"))
    host = f"[{host}]" if ":" in host else host
    return Login(f"https://{host}:{port}", _read_token(token), context)


def from_kubeconfig() -> Login | None:
    import kopf  # only outside a cluster: kopf reads every kubeconfig form

    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if info is None:
        return None
    if info.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        ca_data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
        context = ssl.create_default_context(cafile=info.ca_path, cadata=ca_data)
    if info.certificate_path or info.certificate_data:
        context.load_cert_chain(*_client_cert_files(info))
    token = info.token
    server = info.server.rstrip("/")
    return Login(server, lambda: token, None if server.startswith("http://") else context)


def _client_cert_files(info: Any) -> tuple[str, str]:
    """ssl loads a client certificate from files only; kubeconfigs often inline it."""
    if info.certificate_path:
        return str(info.certificate_path), str(info.private_key_path)
    directory = Path(tempfile.mkdtemp(prefix="sidegate-kube-"))
    cert, key = directory / "client.crt", directory / "client.key"
    for path, data in ((cert, info.certificate_data), (key, info.private_key_data)):
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
        path.chmod(0o600)
    return str(cert), str(key)


class Client:
    def __init__(self, login: Login, *, timeout: float = 30.0) -> None:
        self._login = login
        self._server = login.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=login.ssl_context or False),
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=None),
        )
        self._timeout = timeout

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self._login.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _json(
        self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        headers = self._headers()
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body)
        try:
            async with self._session.request(
                method,
                self._server + path,
                data=data,
                params=params,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as answer:
                if answer.status >= 400:
                    raise ApiError(f"{method} {path}: HTTP {answer.status}", answer.status)
                return await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ApiError(f"{method} {path}: {type(exc).__name__}") from None

    async def list_objects(self, namespace: str, plural: str) -> dict[str, Any]:
        found: dict[str, Any] = await self._json("GET", f"/api/v1/namespaces/{namespace}/{plural}")
        return found

    async def watch(
        self, namespace: str, plural: str, resource_version: str, server_timeout: int
    ) -> AsyncIterator[dict[str, Any]]:
        """The watch stream's events; ends when the server closes it (``timeoutSeconds``)."""
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(server_timeout),
        }
        if resource_version:
            params["resourceVersion"] = resource_version
        path = f"/api/v1/namespaces/{namespace}/{plural}"
        try:
            async with self._session.get(
                self._server + path,
                params=params,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=None, sock_read=server_timeout + 30),
            ) as answer:
                if answer.status >= 400:
                    raise ApiError(f"watch {path}: HTTP {answer.status}", answer.status)
                buffer = b""
                async for chunk in answer.content.iter_any():
                    buffer += chunk
                    if len(buffer) > _MAX_EVENT_BYTES:
                        raise ApiError(f"watch {path}: an event larger than {_MAX_EVENT_BYTES}")
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        if line.strip():
                            event = json.loads(line)
                            if isinstance(event, dict):
                                yield event
        except (
            aiohttp.ClientError,
            aiohttp.http_exceptions.HttpProcessingError,
            TimeoutError,
            ValueError,
        ) as exc:
            raise ApiError(f"watch {path}: {type(exc).__name__}") from None

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """The TokenReview's status (authenticated, user, audiences, error)."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        answer = await self._json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body)
        status = answer.get("status") if isinstance(answer, dict) else None
        return status if isinstance(status, dict) else {}

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self._json(
                "GET", f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    async def close(self) -> None:
        await self._session.close()
