"""Who is calling: the caller's projected ServiceAccount token, checked with TokenReview.

The API server says whether the token is valid for the broker's audience and which pod it
is bound to. The answer is cached per token until the token expires (its ``exp`` claim,
read only after the API server vouched for the token), so TokenReview traffic follows the
number of pods per hour, not the number of requests: the kubelet rotates a sidecar's token
every few minutes and a long-poll comes back every ``--max-wait`` seconds.

Tokens are cached by their SHA-256, never kept themselves.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from sidegate.broker import kube, pods

logger = logging.getLogger(__name__)

_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
# A token without a readable exp claim is trusted this long before it is reviewed again.
_DEFAULT_SECONDS = 60.0
# However long a token claims to live, it is reviewed again after this (a revoked token,
# e.g. its pod deleted, stops working within it).
_MAX_SECONDS = 600.0
_MAX_TOKEN_BYTES = 16 * 1024
# A refused token is refused again without asking for this long: a caller retrying a bad
# token (or flooding the broker with them) costs the API server one review per interval.
_REFUSED_SECONDS = 10.0
# A JWT segment: base64url without padding (RFC 7515). b64decode alone skips characters
# outside its alphabet and accepts "+" and "/": a malformed segment could still yield a claim.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")


class Unauthenticated(Exception):
    """The token is not valid for the broker (401). The message never holds the token."""


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    expires: float  # wall-clock seconds: until then the review stands


def expiry_claim(token: str) -> float | None:
    """The ``exp`` claim of a JWT, unverified: only used to bound the cache of a token the
    API server has just accepted."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    if not _SEGMENT.fullmatch(parts[1]):
        return None
    padded = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        payload = json.loads(base64.b64decode(padded, altchars="-_", validate=True))
    except ValueError:
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def identity_from(status: dict[str, Any], audience: str, now: float, token: str) -> Identity:
    """The caller's identity from a TokenReview status; raise Unauthenticated or Refused."""
    if status.get("authenticated") is not True:
        raise Unauthenticated("the token was not accepted by the API server")
    if audience not in (status.get("audiences") or []):
        raise Unauthenticated(f"the token is not meant for audience {audience!r}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    if not username.startswith(_SERVICE_ACCOUNT_PREFIX):
        raise Unauthenticated("the token is not a service account's")
    namespace, _, service_account = username.removeprefix(_SERVICE_ACCOUNT_PREFIX).partition(":")
    pod_name, pod_uid = pods.pod_identity(user.get("extra") or {})
    claimed = expiry_claim(token)
    expires = min(claimed if claimed is not None else now + _DEFAULT_SECONDS, now + _MAX_SECONDS)
    if expires <= now:
        raise Unauthenticated("the token has expired")
    return Identity(namespace, service_account, pod_name, pod_uid, expires)


class Reviewer:
    def __init__(
        self,
        client: kube.Client,
        audience: str,
        *,
        clock: Callable[[], float] = time.time,
        max_entries: int = 50_000,
        on_review: Callable[[str], None] = lambda result: None,
    ) -> None:
        self._client = client
        self._audience = audience
        self._clock = clock
        self._max = max_entries
        self._on_review = on_review
        self._cache: collections.OrderedDict[bytes, Identity] = collections.OrderedDict()
        # Refused tokens: until when, and the refusal (a reason code, or None for a 401).
        self._refused: collections.OrderedDict[bytes, tuple[float, str | None, str]] = (
            collections.OrderedDict()
        )

    def __len__(self) -> int:
        return len(self._cache)

    async def review(self, token: str) -> Identity:
        if not token or len(token) > _MAX_TOKEN_BYTES:
            raise Unauthenticated("no usable bearer token")
        key = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        found = self._cache.get(key)
        if found is not None:
            if found.expires > now:
                self._cache.move_to_end(key)
                return found
            del self._cache[key]
        refused = self._refused.get(key)
        if refused is not None and refused[0] > now:
            _, code, message = refused
            raise Unauthenticated(message) if code is None else pods.Refused(code, message)
        try:
            status = await self._client.review_token(token, [self._audience])
        except kube.ApiError as exc:
            self._on_review("error")
            raise Unavailable(str(exc)) from None
        try:
            identity = identity_from(status, self._audience, now, token)
        except (Unauthenticated, pods.Refused) as exc:
            self._on_review("refused")
            code = exc.code if isinstance(exc, pods.Refused) else None
            self._refused[key] = (now + _REFUSED_SECONDS, code, str(exc))
            self._refused.move_to_end(key)
            while len(self._refused) > self._max:
                self._refused.popitem(last=False)
            raise
        self._on_review("accepted")
        self._cache[key] = identity
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return identity


class Unavailable(Exception):
    """The API server could not review the token (503: the caller retries)."""
