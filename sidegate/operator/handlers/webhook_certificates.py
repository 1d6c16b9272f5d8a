"""The webhook's CA, serving certificate and ``caBundle``, kept by the leading operator when
the chart neither uses cert-manager nor an existing Secret (``webhook_tls.py`` says why).

``keep`` runs beside the release namespace watch (leader only), checking every
``check_seconds``: the CA Secret is created once (create-only: two replicas at a hand-over
cannot make two), the serving Secret is (re)issued when it is missing, not signed by the CA,
missing a name, or has a third of its life left, and each webhook configuration's
``caBundle`` is put back when it differs (a `helm upgrade` of a chart version that rendered
one, or a hand edit). Every write is conditional on the resourceVersion read. Keys are never
logged.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import logging
from typing import TYPE_CHECKING, Any

import aiohttp
import kopf

from sidegate.operator import webhook_tls

if TYPE_CHECKING:
    from sidegate.operator.state import OperatorState

logger = logging.getLogger(__name__)

MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"
VALIDATING = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"


@dataclasses.dataclass(frozen=True)
class WebhookCertificates:
    """What to keep: the webhook Service (its DNS names), the two Secrets, the
    configurations whose ``caBundle`` trusts the CA."""

    service: str
    tls_secret: str
    ca_secret: str
    mutating: str
    validating: str
    check_seconds: float = 10.0  # how soon a caBundle removed (a `helm upgrade`) is back

    @property
    def configurations(self) -> tuple[str, str]:
        return MUTATING + self.mutating, VALIDATING + self.validating


async def ensure(state: OperatorState, wanted: WebhookCertificates) -> None:
    client = state.api()
    namespace = state.namespace
    now = datetime.datetime.now(datetime.UTC)
    names = webhook_tls.dns_names(wanted.service, namespace)

    stored_ca = await client.get(namespace, wanted.ca_secret)
    ca = webhook_tls.pair_of(stored_ca)
    previous = webhook_tls.previous_of(stored_ca, now)
    if ca is None or not webhook_tls.fresh(ca.cert_pem, now):
        replaced = ca.cert_pem if ca is not None and stored_ca is not None else None
        ca = webhook_tls.new_ca(f"{wanted.service}.{namespace}.svc CA", now)
        await client.write(
            webhook_tls.ca_secret(namespace, wanted.ca_secret, ca, replaced), stored_ca
        )
        previous = replaced
        logger.info("webhook CA %s/%s issued", namespace, wanted.ca_secret)
    ca_bundle = webhook_tls.bundle(ca, previous)

    stored = await client.get(namespace, wanted.tls_secret)
    serving = webhook_tls.pair_of(stored)
    reissue = (
        serving is None
        or not webhook_tls.issued_by(serving.cert_pem, ca.cert_pem, names)
        or not webhook_tls.fresh(serving.cert_pem, now)
    )
    if reissue or serving is None:
        serving = webhook_tls.new_serving(ca, names, now)
    if reissue or _decoded(stored, webhook_tls.CA) != ca_bundle:
        await client.write(
            webhook_tls.serving_secret(namespace, wanted.tls_secret, serving, ca_bundle), stored
        )
        logger.info("webhook serving certificate %s/%s written", namespace, wanted.tls_secret)

    encoded = base64.b64encode(ca_bundle.encode()).decode()
    for path in wanted.configurations:
        await _trust(state, path, encoded)


async def _trust(state: OperatorState, path: str, encoded: str) -> None:
    """Set every webhook's ``caBundle`` in one configuration, guarded by its resourceVersion
    (a merge patch replaces the whole ``webhooks`` list, so it must be the one read)."""
    client = state.api()
    found = await client.read(path)
    if found is None:
        return  # not installed (webhook.enabled=false), or being uninstalled
    hooks: list[dict[str, Any]] = list(found.get("webhooks") or [])
    if all((h.get("clientConfig") or {}).get("caBundle") == encoded for h in hooks):
        return
    patched = [
        {**h, "clientConfig": {**(h.get("clientConfig") or {}), "caBundle": encoded}} for h in hooks
    ]
    version = (found.get("metadata") or {}).get("resourceVersion")
    answer = await client.patch(
        path, {"metadata": {"resourceVersion": version}, "webhooks": patched}
    )
    if answer is not None:
        logger.info("caBundle of %s set", path.rsplit("/", 1)[-1])


def _decoded(secret: dict[str, Any] | None, key: str) -> str | None:
    """A data value as text; None when missing or not text. A Secret holds any bytes (a hand
    edit may put a DER file there): such a value differs from the wanted one and is
    rewritten, it must not stop the upkeep of everything after it."""
    value = ((secret or {}).get("data") or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError
        return None


async def keep(state: OperatorState, wanted: WebhookCertificates) -> None:
    """``ensure`` now and every ``check_seconds``, for as long as this replica leads."""
    while True:
        try:
            await ensure(state, wanted)
        # A 409 (someone was faster), the API away (HTTP or connection errors), or what it
        # cannot use (ValueError: a CA key it cannot sign with, an answer that is not JSON):
        # the upkeep must outlive each, it is the only one.
        except (kopf.TemporaryError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            logger.warning("webhook certificates: %s; checking again soon", exc)
            await asyncio.sleep(min(5.0, wanted.check_seconds))
            continue
        except Exception:  # a bug, or an object no one foresaw: said loudly, not the end
            logger.exception("webhook certificates: check failed; checking again soon")
            await asyncio.sleep(min(5.0, wanted.check_seconds))
            continue
        await asyncio.sleep(wanted.check_seconds)
