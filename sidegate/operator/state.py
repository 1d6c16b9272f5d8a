"""What the operator's handlers share: its settings, and the API client made at login."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable

import kopf

from sidegate.operator.injection import SidecarSpec
from sidegate.operator.kube import SecretsClient
from sidegate.policy import crd

RESOURCE = (crd.GROUP, crd.VERSION, crd.PLURAL)


@dataclasses.dataclass
class OperatorState:
    login: Callable[..., kopf.ConnectionInfo | None]
    bundle_secret: str = "sidegate-bundle"  # noqa: S105 - a Secret object's name, not a secret
    credentials_secret: str = "sidegate-credentials"  # noqa: S105 - likewise
    admin_secret: str = "sidegate-admin"  # noqa: S105 - likewise
    namespace: str = "sidegate-system"  # where the source credential Secrets live
    source_label: tuple[str, str] = ("sidegate.io/credentials", "source")
    overlap: float = 300.0  # seconds a rotated-out value stays as <key>.previous
    admin_rotation: float = 86400.0  # seconds between admin token rotations
    sidecar: SidecarSpec | None = None  # None: no injection webhook
    client: SecretsClient | None = None
    _locks: collections.defaultdict[str, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )

    @property
    def upkeep_interval(self) -> float:
        """How often each policy's upkeep timer looks: often enough to honour the rotation
        interval and the overlap's expiry (a `.previous` outlives its overlap by at most
        this), without polling the API server hard."""
        return max(1.0, min(60.0, self.admin_rotation / 4, self.overlap / 4))

    def lock(self, namespace: str) -> asyncio.Lock:
        return self._locks[namespace]
