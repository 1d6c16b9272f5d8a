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
from collections.abc import Iterable
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
    rate_limits: models.RateLimits | None = Field(None, alias="rateLimits")

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
        rate_limits=policy.spec.rate_limits,
    )


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _policies_json(policies: list[BundlePolicy]) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json", by_alias=True, exclude_none=True) for p in policies]


def content_hash(policies: list[BundlePolicy]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(_policies_json(policies))).hexdigest()


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
    return _canonical(
        {
            "schemaVersion": bundle.schema_version,
            "policies": _policies_json(bundle.policies),
            "hash": bundle.hash,
        }
    )


def loads(data: bytes) -> PolicyBundle:
    """Parse and check a bundle; raise BundleRejected with a reason fit for a log line."""
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
        bundle = PolicyBundle.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"])
        raise errors.BundleRejected(f"{where}: {first['msg']}") from None
    if content_hash(bundle.policies) != bundle.hash:
        raise errors.BundleRejected("hash does not match the policies (truncated or altered)")
    return bundle
