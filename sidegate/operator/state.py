"""What the operator's handlers share: its settings, the API client made at login, the signing
keys and what it last published. Everything the operator writes lives in its own (release)
namespace; application namespaces only hold the RBACPolicy objects it reads."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import kopf

from sidegate.operator.injection import SidecarSpec
from sidegate.operator.kube import ApiClient
from sidegate.operator.metrics import Metrics
from sidegate.operator.signing_keys import SigningKeys
from sidegate.policy import crd

if TYPE_CHECKING:  # these import this module
    from sidegate.operator.handlers.webhook_certificates import WebhookCertificates
    from sidegate.operator.leadership import Peering

RESOURCE = (crd.GROUP, crd.VERSION, crd.PLURAL)
CREDENTIALS_SECRET = "sidegate-credentials"  # noqa: S105  # pragma: allowlist secret - a name
ADMIN_PREFIX = "sidegate-admin-"
ADMIN_FOR_LABEL = "sidegate.io/admin-for"


@dataclasses.dataclass(frozen=True)
class Published:
    """The bundle the operator last wrote (or found in force) for a namespace: what it
    restores when the Secret is edited, and re-signs when the active key changes."""

    bundle: bytes  # canonical bundle bytes, as signed
    bundle_hash: str
    envelope: bytes
    serial: int
    key_id: str


@dataclasses.dataclass
class OperatorState:
    login: Callable[..., kopf.ConnectionInfo | None]
    namespace: str = "sidegate-system"  # the release namespace: every object it writes
    source_label: tuple[str, str] = ("sidegate.io/credentials", "source")
    overlap: float = 300.0  # seconds a rotated-out value stays as <key>.previous
    admin_rotation: float = 86400.0  # seconds between admin token rotations
    sidecar: SidecarSpec | None = None  # None: no injection webhook
    broker_ca_file: Path | None = None  # the broker's CA, injected into sidecar configs
    client: ApiClient | None = None
    keys: SigningKeys | None = None
    sources: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    sources_listed: bool = False  # no fan-out before the first list: never write half a set
    published: dict[str, Published] = dataclasses.field(default_factory=dict)
    release_watch: asyncio.Task[None] | None = None
    peering: Peering | None = None  # None: standalone, the only replica (no leader election)
    leadership: asyncio.Task[None] | None = None
    # The webhook's CA and certificate, kept by the leader (None: cert-manager or the
    # installer provides them).
    webhook_certificates: WebhookCertificates | None = None
    certificates_task: asyncio.Task[None] | None = None
    metrics: Metrics = dataclasses.field(default_factory=Metrics)
    _locks: collections.defaultdict[str, asyncio.Lock] = dataclasses.field(
        default_factory=lambda: collections.defaultdict(asyncio.Lock)
    )

    @property
    def upkeep_interval(self) -> float:
        """How often each policy's upkeep timer looks: often enough to honour the rotation
        interval and the overlap's expiry (a `.previous` outlives its overlap by at most
        this), without polling the API server hard."""
        return max(1.0, min(60.0, self.admin_rotation / 4, self.overlap / 4))

    async def use_client(self, info: kopf.ConnectionInfo) -> None:
        """The API client of a new login. kopf logs in again on a 401 (an expired or rotated
        token): the new client is in place before the old one closes, so ``api()`` never
        hands out a closing client, and the loops still on the old one (its watches end when
        it closes, kube.py) list again on the new one."""
        previous, self.client = self.client, ApiClient(info)
        if previous is not None:
            await previous.close()

    def api(self) -> ApiClient:
        if self.client is None:
            raise kopf.TemporaryError("not logged in to the API server yet", delay=1)
        return self.client

    def lock(self, name: str) -> asyncio.Lock:
        """One lock per object the operator writes (by name), and one for the keys."""
        return self._locks[name]


def admin_secret(namespace: str) -> str:
    return ADMIN_PREFIX + namespace
