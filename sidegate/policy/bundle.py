"""The policy bundle: the one contract between the operator and the sidecar.

The operator compiles every valid ``RBACPolicy`` of a namespace into a bundle and writes it
into a Secret; the sidecar loads it (or, standalone, builds it from YAML files) and keeps
the last good one when a new one fails to load. The JSON is canonical (sorted keys, no
spaces, policies sorted by namespace/name) so equal policy sets give byte-equal bundles
and equal hashes, which is what lets the operator skip writes that change nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidegate import errors
from sidegate.policy import models

SCHEMA_VERSION = 1


class BundlePolicy(BaseModel):
    """What the sidecar needs of one policy: no metadata beyond its name, no status."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    namespace: str
    name: str
    subjects: list[models.Subject] = Field(default_factory=list)
    rules: list[models.Rule] = Field(default_factory=list)
    allowed_tenants: list[models.TenantName] | None = Field(None, alias="allowedTenants")
    rate_limits: models.RateLimits | None = Field(None, alias="rateLimits")
    # Optional and left out when unset, so bundles without it keep their hash; a sidecar
    # too old to know it refuses the bundle rather than ignore a retention rule.
    retention: models.Retention | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PolicyBundle(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    policies: list[BundlePolicy] = Field(default_factory=list)
    hash: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")


def to_bundle_policy(policy: models.RBACPolicy) -> BundlePolicy:
    return BundlePolicy(
        namespace=policy.metadata.namespace,
        name=policy.metadata.name,
        subjects=policy.spec.subjects,
        rules=policy.spec.rules,
        allowed_tenants=policy.spec.allowed_tenants,
        rate_limits=policy.spec.rate_limits,
        retention=policy.spec.retention,
    )


_ZERO_HASH = "sha256:" + "0" * 64
_HEADER = b'{"hash":"%s","policies":['
_FOOTER = b'],"schemaVersion":%d}'
# Found by search, not by parsing: the version decides whether to parse at all, and the
# hash is checked before any parsing. Canonical bundles put the hash first and the version
# last (sorted keys).
_HASH_FIELD = re.compile(rb'"hash"\s*:\s*"(sha256:[0-9a-f]{64})"')
_VERSION_FIELD = re.compile(rb'"schemaVersion"\s*:\s*(-?[0-9]+)\s*}\s*$')


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _encode(policies: list[BundlePolicy]) -> tuple[bytes, str]:
    """The bundle's bytes and hash.

    Layout: canonical JSON (sorted keys, no spaces) with one policy per line, so the whole
    file is one JSON document and a reader can still take it a policy at a time::

        {"hash":"sha256:...","policies":[
        {...},
        {...}
        ],"schemaVersion":1}

    The hash is SHA-256 over these exact bytes with the hash itself written as 64 zeros:
    checking it costs one pass of hashlib, not a re-serialisation.
    """
    lines = [_HEADER % _ZERO_HASH.encode()]
    lines += [
        _canonical(p.model_dump(mode="json", by_alias=True, exclude_none=True)) + b","
        for p in policies
    ]
    if policies:
        lines[-1] = lines[-1][:-1]
    lines.append(_FOOTER % SCHEMA_VERSION)
    placeholder = b"\n".join(lines)
    digest = "sha256:" + hashlib.sha256(placeholder).hexdigest()
    return placeholder.replace(_ZERO_HASH.encode(), digest.encode(), 1), digest


def content_hash(policies: list[BundlePolicy]) -> str:
    return _encode(policies)[1]


def to_bundle(policies: Iterable[models.RBACPolicy]) -> PolicyBundle:
    """Compile policies into a bundle. Two policies with one namespace/name are an error."""
    compiled: dict[str, BundlePolicy] = {}
    for policy in policies:
        item = to_bundle_policy(policy)
        if item.key in compiled:
            raise errors.BundleRejected(f"policy {item.key} is defined twice")
        compiled[item.key] = item
    ordered = [compiled[key] for key in sorted(compiled)]
    return PolicyBundle(policies=ordered, hash=content_hash(ordered))


def empty() -> PolicyBundle:
    """The deny-all bundle: what a namespace without policies gets."""
    return PolicyBundle(policies=[], hash=content_hash([]))


def dumps(bundle: PolicyBundle) -> bytes:
    data, digest = _encode(bundle.policies)
    if digest != bundle.hash:
        raise errors.BundleRejected("bundle hash does not match its policies")
    return data


def loads(data: bytes) -> PolicyBundle:
    """Parse and check a bundle; raise BundleRejected with a reason fit for a log line."""
    claimed, policies = read(data)
    return PolicyBundle(policies=list(policies), hash=claimed)


def read(data: bytes) -> tuple[str, Iterator[BundlePolicy]]:
    """Check a bundle's version and hash; return the hash and its policies, parsed lazily.

    Bundles in the canonical layout are parsed a policy at a time: a worker thread doing
    it hands the interpreter back to the event loop between policies instead of holding it
    for one long parse, and a caller that compiles as it goes never holds every parsed
    model at once. Iterating raises BundleRejected at the first invalid policy."""
    version = _VERSION_FIELD.search(data[-256:])
    if version is None or int(version.group(1)) != SCHEMA_VERSION:
        found = version.group(1).decode() if version else "missing"
        raise errors.BundleRejected(
            f"schemaVersion {found} is not supported (this sidecar reads {SCHEMA_VERSION})"
        )
    hash_field = _HASH_FIELD.search(data, 0, 256)
    if hash_field is None:
        raise errors.BundleRejected("not a bundle: no hash")
    claimed = hash_field.group(1).decode()
    placeholder = data.replace(claimed.encode(), _ZERO_HASH.encode(), 1)
    if "sha256:" + hashlib.sha256(placeholder).hexdigest() != claimed:
        raise errors.BundleRejected("hash does not match the content (truncated or altered)")
    lines = data.split(b"\n")
    if (
        len(lines) >= 2
        and lines[0] == _HEADER % claimed.encode()
        and lines[-1] == _FOOTER % SCHEMA_VERSION
    ):
        body = lines[1:-1]
        return claimed, (_policy(line.removesuffix(b","), i) for i, line in enumerate(body))
    return claimed, iter(_loads_any_layout(data, claimed).policies)


def _policy(line: bytes, index: int) -> BundlePolicy:
    try:
        return BundlePolicy.model_validate_json(line)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in ("policies", index, *first["loc"]))
        raise errors.BundleRejected(f"{where}: {first['msg']}") from None


def _loads_any_layout(data: bytes, claimed: str) -> PolicyBundle:
    """A bundle that is valid JSON but not in the canonical layout (written by hand)."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise errors.BundleRejected(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise errors.BundleRejected("not a JSON object")
    version = raw.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise errors.BundleRejected(
            f"schemaVersion {version!r} is not supported (this sidecar reads {SCHEMA_VERSION})"
        )
    try:
        return PolicyBundle.model_validate({**raw, "hash": claimed})
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise errors.BundleRejected(f"{where}: {first['msg']}") from None
