"""Shipping sealed spool segments, their signed digests and the run's public key to S3, and
deleting them only once S3 has them.

Each segment goes up gzip-compressed (deterministically: the same segment always makes the
same bytes) to ``s3://BUCKET/PREFIX/yyyy/mm/dd/NAMESPACE/POD/SEGMENT.jsonl.gz``, the date
being the segment's first event's; digests (``digest-N.json``) and public keys
(``key-ID.pem``) go beside them as they are, dated by the upload. The key is a function of
the file alone, so an upload repeated after a crash writes the same bytes to the same
object: no duplicates, and (under versioning) only identical versions. Every upload carries a
SHA-256 checksum S3 verifies, and optionally SSE-KMS and Object Lock retention.

Failures back off exponentially with full jitter (a random wait up to
``min(cap, base * 2**attempt)``), so a fleet of sidecars does not hammer a recovering S3 in
step. Credentials come from the standard AWS chain (environment, files, web identity);
none are in Sidegate's config.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import gzip
import hashlib
import logging
import random
import time
from pathlib import Path
from typing import Any

from sidegate.audit import events
from sidegate.audit.metrics import AuditMetrics
from sidegate.audit.spool import Spool

logger = logging.getLogger(__name__)

_JITTER = random.SystemRandom()  # full jitter for backoff (SystemRandom: no seeding questions)


def ulid_time(ulid: str) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(events.ulid_milliseconds(ulid) / 1000, tz=datetime.UTC)


def object_key(prefix: str, namespace: str, pod: str, segment: Path) -> str:
    if segment.name.endswith(".jsonl"):
        day = ulid_time(segment.stem).strftime("%Y/%m/%d")
        name = segment.name + ".gz"
    else:  # a digest or a public key
        day = datetime.datetime.now(datetime.UTC).strftime("%Y/%m/%d")
        name = segment.name
    parts = [p for p in (prefix.strip("/"), day, namespace, pod or "unknown-pod", name) if p]
    return "/".join(parts)


def compress(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=6, mtime=0)


class S3Exporter:
    def __init__(
        self,
        spool: Spool,
        metrics: AuditMetrics,
        *,
        bucket: str,
        prefix: str,
        namespace: str,
        pod: str,
        region: str | None,
        endpoint_url: str | None,
        sse_kms_key_id: str | None,
        object_lock_mode: str | None,
        object_lock_days: int | None,
        base_backoff: float,
        max_backoff: float,
    ) -> None:
        self._spool = spool
        self._metrics = metrics
        self._bucket = bucket
        self._prefix = prefix
        self._namespace = namespace
        self._pod = pod
        self._region = region
        self._endpoint_url = endpoint_url
        self._sse_kms_key_id = sse_kms_key_id
        self._object_lock_mode = object_lock_mode
        self._object_lock_days = object_lock_days
        self._base_backoff = base_backoff
        self._max_backoff = max_backoff
        self._client: Any = None
        self._context: Any = None

    async def start(self) -> None:
        import aioboto3  # ~30 MB of botocore: loaded only when S3 export is configured
        from botocore.config import Config

        session = aioboto3.Session()
        self._context = session.client(
            "s3",
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            # One attempt per call: the retry loop here owns backoff and jitter, and a call
            # must fail fast enough for the spool to notice an outage.
            config=Config(
                retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5, read_timeout=30
            ),
        )
        self._client = await self._context.__aenter__()

    async def stop(self) -> None:
        if self._context is not None:
            await self._context.__aexit__(None, None, None)
            self._context = self._client = None

    async def run(self) -> None:
        """Upload sealed segments, oldest first, until cancelled."""
        attempt = 0
        while True:
            segments = self._spool.sealed_files()
            if not segments:
                self._spool.sealed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(5.0):
                        await self._spool.sealed.wait()
                continue
            for segment in segments:
                try:
                    await self.upload(segment)
                except Exception as exc:
                    attempt += 1
                    delay = _JITTER.uniform(
                        0, min(self._max_backoff, self._base_backoff * 2**attempt)
                    )
                    self._metrics.uploads.labels("failed").inc()
                    logger.warning(
                        "audit upload failed, retrying",
                        extra={
                            "segment": segment.name,
                            "attempt": attempt,
                            "retry_in_s": round(delay, 2),
                            "error": _describe(exc),
                        },
                    )
                    await asyncio.sleep(delay)
                    break
                attempt = 0

    async def upload(self, segment: Path) -> None:
        data = await asyncio.to_thread(segment.read_bytes)
        if segment.name.endswith(".jsonl"):
            body, content_type = await asyncio.to_thread(compress, data), "application/x-ndjson"
        elif segment.name.endswith(".pem"):
            body, content_type = data, "application/x-pem-file"
        else:
            body, content_type = data, "application/json"
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        extra: dict[str, Any] = {}
        if self._sse_kms_key_id:
            extra["ServerSideEncryption"] = "aws:kms"
            extra["SSEKMSKeyId"] = self._sse_kms_key_id
        if self._object_lock_mode and self._object_lock_days:
            extra["ObjectLockMode"] = self._object_lock_mode
            extra["ObjectLockRetainUntilDate"] = datetime.datetime.now(
                datetime.UTC
            ) + datetime.timedelta(days=self._object_lock_days)
        key = object_key(self._prefix, self._namespace, self._pod, segment)
        await self._client.put_object(
            Bucket=self._bucket,
            Key=key,
            Body=body,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
            ChecksumSHA256=checksum,
            **extra,
        )
        self._spool.release(segment)  # only now: S3 has answered 200 for these exact bytes
        self._metrics.uploads.labels("ok").inc()
        logger.info("audit segment uploaded", extra={"key": key, "bytes": len(body)})

    async def drain(self, grace: float) -> bool:
        """Upload everything sealed within ``grace`` seconds (SIGTERM). True if all went."""
        deadline = time.monotonic() + grace
        while (segments := self._spool.sealed_files()) and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(
                    self.upload(segments[0]), max(0.1, deadline - time.monotonic())
                )
            except Exception as exc:
                logger.warning("audit upload at shutdown failed", extra={"error": _describe(exc)})
                await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        left = self._spool.sealed_files()
        if left:
            logger.warning(
                "audit segments left in the spool at shutdown; uploaded at next start",
                extra={"segments": len(left)},
            )
        return not left


def _describe(exc: BaseException) -> str:
    # botocore messages name the bucket and key, never credentials; keep them short anyway.
    return f"{type(exc).__name__}: {str(exc)[:200]}"
