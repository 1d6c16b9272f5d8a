"""The audit event: its schema, its id, its sequence number and its place in the hash chain.

Every event carries a ``sequence`` number (1, 2, 3, ... over the trail's whole life, across
restarts), ``prev_hash`` (the previous event's ``hash``) and ``hash``: SHA-256 over the
canonical JSON of the event without ``hash`` (sorted keys, no spaces, UTF-8). Altering,
removing or reordering an event breaks the chain at that line; the signed digests
(``digests``) make the same true against someone who recomputes every hash, since only
the sidecar holds the key. Prompts and completions are never recorded, and nothing here
holds a secret: an event says who called which model with what outcome, not what was said.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[2] = 2  # 2: sequence numbers and signed digests
GENESIS = "0" * 64  # prev_hash of the first event a spool ever writes

Result = Literal["allowed", "denied", "rate_limited", "error", "ok", "rejected"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Actor(_Strict):
    kind: Literal["workload", "admin", "system"] = Field(
        description="workload: the app's request; admin: the admin API; system: the sidecar."
    )
    namespace: str
    service_account: str
    pod: str = ""
    tenant: str | None = None


class Resource(_Strict):
    provider: str | None = None
    model: str | None = Field(None, description="The model the client asked for.")
    route: str | None = Field(None, description="API route (chat, messages, ...) or object.")


class Outcome(_Strict):
    result: Result
    status: int | None = Field(None, description="HTTP status answered, for requests.")
    reason: str | None = Field(None, description="Stable reason code (policy or error).")
    policy: str | None = Field(None, description="The deciding policy, namespace/name.")


class Usage(_Strict):
    input_tokens: int = 0
    output_tokens: int = 0


class AuditEvent(_Strict):
    """One line of the audit trail (JSON Schema: `sidegate audit schema`)."""

    version: Literal[2] = SCHEMA_VERSION
    id: str = Field(description="ULID: unique, and sorts in the order events were written.")
    sequence: int = Field(
        ge=1, description="1, 2, 3, ... over the trail's life: a gap means events are missing."
    )
    timestamp: str = Field(description="UTC, RFC 3339 with microseconds.")
    actor: Actor
    action: str = Field(
        description="llm.chat.completions, llm.messages, admin.policy.put, policy.reload, "
        "credential.reload, audit.restart, ..."
    )
    resource: Resource = Field(default_factory=Resource)
    outcome: Outcome
    request_id: str | None = None
    usage: Usage | None = None
    latency_ms: float | None = None
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")


def canonical(event: dict[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (not \\u escapes), numbers in shortest form."""
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def digest(event: dict[str, Any]) -> str:
    """The hash of an event: over everything but its own ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in event.items() if k != "hash"})).hexdigest()


def sealed_line(event: dict[str, Any]) -> tuple[bytes, str]:
    """The JSON line of an event without ``hash``, with its hash added; and the hash.
    One serialisation: the hash is appended to the canonical bytes it was computed over."""
    body = canonical(event)
    value = hashlib.sha256(body).hexdigest()
    return body[:-1] + b',"hash":"' + value.encode() + b'"}\n', value


def rfc3339(at: float) -> str:
    seconds = int(at)
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        + f".{int((at - seconds) * 1e6):06d}Z"
    )


# Crockford's base32 alphabet (an alphabet, not a secret).
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # pragma: allowlist secret


class Ulids:
    """Monotonic ULIDs: 48 bits of milliseconds, 80 random bits; within one millisecond
    the random part counts up, so ids sort exactly in the order they were made."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = -1
        self._random = 0

    def new(self, at: float) -> str:
        with self._lock:
            ms = max(int(at * 1000), self._last_ms)
            if ms == self._last_ms:
                self._random += 1
            else:
                self._last_ms = ms
                self._random = int.from_bytes(os.urandom(10), "big") >> 1  # room to count up
            value = (ms << 80) | (self._random & ((1 << 80) - 1))
        return "".join(CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def ulid_milliseconds(ulid: str) -> int:
    """The time a ULID was made, in milliseconds since the epoch."""
    milliseconds = 0
    for char in ulid[:10]:
        milliseconds = milliseconds * 32 + CROCKFORD.index(char)
    return milliseconds


def json_schema() -> dict[str, Any]:
    return AuditEvent.model_json_schema()
