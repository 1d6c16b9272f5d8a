"""The sidecar's side of the broker: a long-poll for the next delivery, held in memory only.

Each call presents the projected ServiceAccount token (read again from its file every time:
the kubelet rotates it) and the version in hand; the broker answers the next version as soon
as there is one, or 304 after ``wait_seconds``. A delivery's parts are each installed with
the last-good rule of their own holder: provider keys (``CredentialStore.install``), the
signed bundle (``PolicyHolder.install_signed``: verified, never older), the admin tokens and
the Redis settings. Nothing of it is written to disk, to the environment or to a log line.

When the broker cannot be reached the sidecar keeps serving on what it holds; every answer
from the broker (a delivery or a 304) extends that by ``max_staleness_seconds``. Past it the
keys refuse with 503 ``broker_unreachable``. Retries back off exponentially with jitter, so
a restarted broker is not met by every sidecar of the cluster in the same instant.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import re
import ssl
import time
from collections.abc import Callable, Sequence

import aiohttp

from sidegate import errors
from sidegate.policy import delivery
from sidegate.redact import Redactor, Secret
from sidegate.sidecar import credentials, policies
from sidegate.sidecar.metrics import Metrics
from sidegate.sidecar.settings import BrokerSettings

logger = logging.getLogger(__name__)

_BASE_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
_CODE = re.compile(r"[a-z_]{1,64}")


class Unreachable(Exception):
    """One poll failed; the message names the reason (a status, a code), never a secret."""


def backoff(failures: int, draw: Callable[[], float] = random.random) -> float:
    """Seconds before retry ``failures``: exponential, capped, the upper half jittered."""
    ceiling: float = min(_MAX_BACKOFF, _BASE_BACKOFF * 2.0 ** min(failures - 1, 16))
    return ceiling / 2 + draw() * ceiling / 2


def tls_context(config: BrokerSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(config.ca_file) if config.ca_file else None, cadata=config.ca_pem
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


AdminTokensSink = Callable[[Sequence[Secret]], None]
RedisSink = Callable[[Secret, Secret | None], None]


class BrokerClient:
    def __init__(
        self,
        config: BrokerSettings,
        namespace: str,
        store: credentials.CredentialStore,
        holder: policies.PolicyHolder,
        metrics: Metrics,
        redactor: Redactor,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.namespace = namespace
        self._store = store
        self._holder = holder
        self._metrics = metrics
        self._redactor = redactor
        self._clock = clock
        self.version = ""
        self.deliveries = 0
        self._admin_sinks: list[AdminTokensSink] = []
        self._redis_sinks: list[RedisSink] = []
        self._admin_tokens: tuple[Secret, ...] = ()
        self._redis: tuple[Secret, Secret | None] | None = None
        # The audit trail's public key (``ed25519:...``), registered with every poll.
        self.audit_key: str | None = None

    def on_admin_tokens(self, sink: AdminTokensSink) -> None:
        self._admin_sinks.append(sink)
        if self._admin_tokens:
            sink(self._admin_tokens)

    def on_redis(self, sink: RedisSink) -> None:
        self._redis_sinks.append(sink)
        if self._redis is not None:
            sink(*self._redis)

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Poll until cancelled."""
        failures = 0
        while True:
            try:
                await self.poll(session)
                failures = 0
            except Unreachable as exc:
                failures += 1
                delay = backoff(failures)
                logger.warning(
                    "credential broker not answering; %s",
                    "serving on the last delivery" if self.deliveries else "not ready yet",
                    extra={"reason": str(exc), "retry_in": round(delay, 2)},
                )
                await asyncio.sleep(delay)

    def _token(self) -> str:
        try:
            return credentials.read_key(self.config.token_file).reveal()
        except errors.CredentialRejected as exc:
            raise Unreachable(f"service account token: {exc}") from None

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """One long-poll: install what it brings; raise Unreachable when it fails."""
        wait = self.config.wait_seconds
        headers = {"Authorization": f"Bearer {self._token()}", "Accept": "application/json"}
        if self.audit_key is not None:
            headers[delivery.AUDIT_KEY_HEADER] = self.audit_key
        try:
            async with session.get(
                self.config.url + delivery.PATH,
                params={"after": self.version, "wait": str(wait)},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=wait + 15, connect=5),
                allow_redirects=False,
            ) as answer:
                if answer.status == 304:
                    self._heard_from()
                    self._metrics.broker_polls.labels("not_modified").inc()
                    return
                body = await _bounded_body(answer)
                if answer.status != 200:
                    self._metrics.broker_polls.labels("refused").inc()
                    raise Unreachable(f"HTTP {answer.status} {_refusal_code(body)}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._metrics.broker_polls.labels("error").inc()
            raise Unreachable(type(exc).__name__) from None
        try:
            found = delivery.loads(body)
        except errors.DeliveryRejected as exc:
            self._metrics.broker_polls.labels("rejected").inc()
            raise Unreachable(str(exc)) from None
        if found.namespace != self.namespace:
            self._metrics.broker_polls.labels("rejected").inc()
            raise Unreachable(f"a delivery for namespace {found.namespace!r}, not this one")
        await self.install(found)
        self._heard_from()
        self._metrics.broker_polls.labels("delivered").inc()

    def _heard_from(self) -> None:
        if self.deliveries:
            self._store.usable_until = self._clock() + self.config.max_staleness_seconds

    async def install(self, found: delivery.Delivery) -> None:
        secrets = [s.get_secret_value() for s in found.admin_tokens]
        if found.redis is not None:
            secrets.append(found.redis.url.get_secret_value())
            if found.redis.password is not None:
                secrets.append(found.redis.password.get_secret_value())
        self._redactor.remember([Secret(s) for s in secrets])
        self._store.install(
            {name: Secret(value.get_secret_value()) for name, value in found.credentials.items()}
        )
        try:
            envelope = base64.b64decode(found.bundle, validate=True)
        except binascii.Error:
            logger.error("delivered bundle is not base64; keeping the policy in force")
        else:
            await self._holder.install_signed(envelope)
        admin = tuple(Secret(t.get_secret_value()) for t in found.admin_tokens)
        if admin != self._admin_tokens:
            self._admin_tokens = admin
            for admin_sink in self._admin_sinks:
                admin_sink(admin)
        redis = (
            (
                Secret(found.redis.url.get_secret_value()),
                Secret(found.redis.password.get_secret_value()) if found.redis.password else None,
            )
            if found.redis is not None
            else None
        )
        if redis is not None and redis != self._redis:
            self._redis = redis
            for redis_sink in self._redis_sinks:
                redis_sink(*redis)
        self.version = found.version
        self.deliveries += 1
        logger.info("delivery installed", extra={"version": found.version})


async def _bounded_body(answer: aiohttp.ClientResponse) -> bytes:
    """The whole body, refused past the largest delivery (a broker is trusted with keys, not
    with this process's memory)."""
    chunks, total = [], 0
    async for chunk in answer.content.iter_chunked(256 * 1024):
        total += len(chunk)
        if total > delivery.MAX_DELIVERY_BYTES:
            raise Unreachable("answer larger than a delivery may be")
        chunks.append(chunk)
    return b"".join(chunks)


def _refusal_code(body: bytes) -> str:
    """The reason code of a refusal, for the log line (a code is a short snake_case word)."""
    try:
        code = json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return "-"
    return code if isinstance(code, str) and _CODE.fullmatch(code) else "-"
