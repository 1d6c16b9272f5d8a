"""The broker's HTTP API: ``GET /v1/delivery`` over TLS, and the plain probe endpoints.

One request, in order: the broker has read its objects → the bearer token passes
TokenReview for the broker's audience (cached per token) → the token's namespace is served
→ the token's pod passes the pod check (``pods.check``, the verdict reused for a short
while) → the namespace's answer, at once if its version is not ``after``, else when it
changes, else 304 after ``wait`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidegate.broker import contents, kube, pods, reviews
from sidegate.broker.metrics import Metrics
from sidegate.policy import delivery, signing

logger = logging.getLogger(__name__)

# A pod that passed the check is read again after this: an ephemeral container added to it
# later (the webhook refuses those; this is the second line) is seen within it.
POD_RECHECK_SECONDS = 30.0
_MAX_POD_VERDICTS = 50_000
_MAX_AUDIT_KEYS = 50_000
_CHUNKED_FROM = 1024 * 1024


@dataclasses.dataclass
class Broker:
    """Everything a delivery request needs, built once by ``running``."""

    contents: contents.Contents
    reviewer: reviews.Reviewer
    client: kube.Client
    image: str
    audience: str
    max_wait: float
    metrics: Metrics
    sidecar_config: Path  # the chart's, as the operator injects it (re-read: it may change)
    ca_file: Path | None = None  # the CA the operator injects as broker.ca_pem
    fixed_user: bool = True  # the injector's --sidecar-user fixed (pods.Expectations)
    clock: Callable[[], float] = time.monotonic
    # The background work (watches, certificate reloads): none of it may have stopped.
    tasks: list[asyncio.Task[None]] = dataclasses.field(default_factory=list)
    # Pods that passed, by (uid, published keys): when they were checked.
    _verdicts: collections.OrderedDict[tuple[str, tuple[str, ...]], float] = dataclasses.field(
        default_factory=collections.OrderedDict, init=False
    )
    # Audit keys registered, by (pod uid, key id): each is logged once per replica.
    _audit_keys: collections.OrderedDict[tuple[str, str], None] = dataclasses.field(
        default_factory=collections.OrderedDict, init=False
    )

    def register_audit_key(self, identity: reviews.Identity, header: str | None) -> None:
        """Record the key a checked pod's sidecar signs its audit digests with: one INFO
        line in the broker's log (the release namespace's, out of the application's reach)
        naming the pod, its uid and the key. A verifier takes the key from there, so a key
        the application put beside the trail in S3 proves nothing. A malformed header is
        counted and ignored: the sidecar still gets its delivery."""
        if not header:
            return
        try:
            public_key = signing.decode_public_key(header.strip())
        except ValueError:
            self.metrics.audit_keys.labels("malformed").inc()
            return
        key_id = signing.key_id(public_key)
        seen = (identity.pod_uid, key_id)
        if seen in self._audit_keys:
            return
        self._audit_keys[seen] = None
        while len(self._audit_keys) > _MAX_AUDIT_KEYS:
            self._audit_keys.popitem(last=False)
        self.metrics.audit_keys.labels("registered").inc()
        logger.info(
            "audit key registered",
            extra={
                "namespace": identity.namespace,
                "service_account": identity.service_account,
                "pod": identity.pod_name,
                "pod_uid": identity.pod_uid,
                "audit_key_id": key_id,
                "audit_public_key": signing.encode_public_key(public_key),
                # What `sidegate audit verify --public-key` reads.
                "audit_public_key_pem": public_key.public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ).decode(),
            },
        )

    async def check_pod(self, identity: reviews.Identity) -> None:
        keys = self.contents.trusted_keys
        key = (identity.pod_uid, keys)
        checked = self._verdicts.get(key)
        if checked is not None and self.clock() - checked < POD_RECHECK_SECONDS:
            return
        pod = await self.client.get_pod(identity.namespace, identity.pod_name)
        try:
            if pod is None:
                raise pods.Refused(delivery.POD_NOT_FOUND, "the token's pod no longer exists")
            expected = pods.Expectations(
                self.image,
                self.audience,
                keys,
                self._sidecar_config(),
                self._ca_pem(),
                fixed_user=self.fixed_user,
            )
            pods.check(pod, uid=identity.pod_uid, expected=expected)
        except pods.Refused as exc:
            self._verdicts.pop(key, None)
            self.metrics.pod_checks.labels(exc.code).inc()
            raise
        self.metrics.pod_checks.labels("ok").inc()
        self._verdicts[key] = self.clock()
        self._verdicts.move_to_end(key)
        while len(self._verdicts) > _MAX_POD_VERDICTS:
            self._verdicts.popitem(last=False)

    def _sidecar_config(self) -> Mapping[str, Any]:
        try:
            return load_sidecar_config(self.sidecar_config)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise pods.Refused(
                delivery.POD_NOT_INJECTED, f"the broker's sidecar config is not readable ({exc})"
            ) from None

    def _ca_pem(self) -> str | None:
        """Read at each check, as the operator reads it at each injection (it is renewed)."""
        if self.ca_file is None:
            return None
        try:
            return self.ca_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise pods.Refused(
                delivery.POD_NOT_INJECTED, f"the broker's CA is not readable ({exc.strerror})"
            ) from None


def load_sidecar_config(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: the sidecar config must be a YAML mapping")
    return config


BROKER = web.AppKey("sidegate.broker", Broker)


def _refuse(broker: Broker, status: int, code: str, message: str) -> web.Response:
    broker.metrics.answers.labels(str(status), code).inc()
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="sidegate-broker"'
    return web.Response(
        body=delivery.refusal(code, message),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def _bearer(request: web.Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header[:7].lower() == "bearer " else ""


def _wait(request: web.Request, longest: float) -> float:
    try:
        asked = float(request.query.get("wait", longest))
    except ValueError:
        raise web.HTTPBadRequest(reason="wait must be a number of seconds") from None
    return min(max(asked, 0.0), longest) if asked == asked else longest  # NaN: the longest


async def deliver(request: web.Request) -> web.StreamResponse:
    broker = request.app[BROKER]
    if not broker.contents.ready or not broker.contents.trusted_keys:
        return _refuse(broker, 503, delivery.NOT_READY, "the broker has not read its objects yet")
    after, wait = request.query.get("after", ""), _wait(request, broker.max_wait)
    try:
        identity = await broker.reviewer.review(_bearer(request))
    except reviews.Unauthenticated as exc:
        return _refuse(broker, 401, delivery.UNAUTHENTICATED, str(exc))
    except reviews.Unavailable:
        return _refuse(broker, 503, delivery.NOT_READY, "the API server cannot review tokens")
    except pods.Refused as exc:
        return _refuse(broker, 403, exc.code, exc.message)
    if broker.contents.snapshot(identity.namespace) is None:
        return _refuse(
            broker, 403, delivery.NAMESPACE_NOT_SERVED, "no policy applies to this namespace"
        )
    try:
        await broker.check_pod(identity)
    except pods.Refused as exc:
        logger.warning(
            "pod refused",
            extra={"namespace": identity.namespace, "pod": identity.pod_name, "code": exc.code},
        )
        return _refuse(broker, 403, exc.code, exc.message)
    except kube.ApiError:
        return _refuse(broker, 503, delivery.NOT_READY, "the API server cannot be read")
    broker.register_audit_key(identity, request.headers.get(delivery.AUDIT_KEY_HEADER))
    broker.metrics.waiting.inc()
    try:
        found = await broker.contents.next_snapshot(identity.namespace, after, wait)
    except LookupError:
        return _refuse(
            broker, 403, delivery.NAMESPACE_NOT_SERVED, "no policy applies to this namespace"
        )
    finally:
        broker.metrics.waiting.dec()
    if found is None:
        broker.metrics.answers.labels("304", "not_modified").inc()
        return web.Response(status=304, headers={"Cache-Control": "no-store"})
    broker.metrics.answers.labels("200", "ok").inc()
    # A namespace with thousands of policies makes an answer of megabytes: sent from a
    # BytesIO (which shares the bytes) in chunks, not in one write that holds the loop.
    body = found.body if len(found.body) < _CHUNKED_FROM else io.BytesIO(found.body)
    return web.Response(
        body=body,
        content_type="application/json",
        headers={"Cache-Control": "no-store", "ETag": f'"{found.version}"'},
    )


def create_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=4096)  # requests carry no body
    app[BROKER] = broker
    app.router.add_get(delivery.PATH, deliver)
    return app


async def healthz(request: web.Request) -> web.Response:
    """Failing once a watch has died (a bug, not an API outage: those are retried), so the
    kubelet restarts the replica rather than let it serve what it no longer follows."""
    stopped = [t.get_name() for t in request.app[BROKER].tasks if t.done()]
    if stopped:
        return web.json_response({"status": "failed", "stopped": stopped}, status=500)
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    ready = broker.contents.ready
    return web.json_response(
        {"ready": ready, "namespaces": broker.contents.namespaces}, status=200 if ready else 503
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    broker = request.app[BROKER]
    broker.metrics.namespaces.set(broker.contents.namespaces)
    return web.Response(
        body=generate_latest(broker.metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


def create_probe_app(broker: Broker) -> web.Application:
    app = web.Application(client_max_size=4096)
    app[BROKER] = broker
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app
