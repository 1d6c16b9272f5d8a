"""Prometheus metrics of one operator process, in a registry of its own.

What a platform team alerts on: no replica leads, bundles or credentials fail to publish,
the webhook's serving certificate nears its expiry, the webhook refuses or fails pods. Every
label value comes from a fixed set below (an outcome, a webhook's id, which Secret kind):
no namespace, name, key or token, so the number of series is fixed whatever the cluster
holds. Each process registers what it does: a webhook-only process (``--webhook-only``) has
no leader gauge nor reconcile counters, an operator that serves no webhook no admission
counter; the label values of the registered ones start at 0, so ``increase()`` sees the
first event.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge

logger = logging.getLogger(__name__)

# Outcomes, each a label value.
PUBLISHED = "published"  # a bundle signed and written
UNCHANGED = "unchanged"  # the same bundle (or credentials) in force already: nothing written
RESTORED = "restored"  # an altered bundle Secret put back
WRITTEN = "written"  # a credentials or admin token Secret written (rotated, created, tidied)
COMPILED = "compiled"  # a valid policy, its namespace's bundle in force
INVALID = "invalid"  # a policy that does not validate (status and Event say why)
FAILED = "failed"  # the API refused or was unreachable: kopf or the watch retries
ALLOWED = "allowed"
PATCHED = "patched"  # the sidecar injected
REFUSED = "refused"  # a 4xx: the pod (or exec) is not admitted
ERROR = "error"  # a 5xx: no signing keys published yet, the broker's CA unreadable, a bug

# Which credentials Secret (label ``kind``): the provider keys fan-out, the admin tokens.
PROVIDER_KEYS = "provider_keys"
ADMIN_TOKEN = "admin_token"  # noqa: S105  # a label value, not a token

WEBHOOKS = ("inject", "guard")  # handlers/webhook.py's ids


class Metrics:
    def __init__(self, *, reconcile: bool = True, certificate: Path | None = None) -> None:
        """``reconcile``: this process reconciles (not ``--webhook-only``); ``certificate``:
        the webhook's serving certificate file, when this process serves the webhook."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.certificate = certificate
        # Made unregistered, registered below by role: call sites need not ask which.
        self.leader = Gauge(
            "sidegate_operator_leader",
            "1 while this replica leads (or runs alone) and reconciles, 0 while it stands by.",
            registry=None,
        )
        self.bundles = Counter(
            "sidegate_operator_bundles",
            "Bundle publications, by outcome (published, unchanged, restored, failed).",
            ["outcome"],
            registry=None,
        )
        self.reconciles = Counter(
            "sidegate_operator_reconciles",
            "RBACPolicy reconciles, by outcome (compiled, invalid, failed).",
            ["outcome"],
            registry=None,
        )
        self.credentials = Counter(
            "sidegate_operator_credentials",
            "Credential Secret upkeeps, by kind (provider_keys: the fan-out the broker serves; "
            "admin_token: rotation), by outcome (written, unchanged, failed).",
            ["kind", "outcome"],
            registry=None,
        )
        self.certificate_expiry = Gauge(
            "sidegate_operator_webhook_certificate_expiry_timestamp_seconds",
            "When the webhook's serving certificate expires (unix time); 0 when its file "
            "cannot be read or parsed.",
            registry=None,
        )
        self.admission_reviews = Counter(
            "sidegate_operator_admission_reviews",
            "Admission reviews answered, by webhook (inject, guard) and outcome (allowed, "
            "patched, refused, error).",
            ["webhook", "outcome"],
            registry=None,
        )
        if reconcile:
            for metric in (self.leader, self.bundles, self.reconciles, self.credentials):
                self.registry.register(metric)
            for outcome in (PUBLISHED, UNCHANGED, RESTORED, FAILED):
                self.bundles.labels(outcome)
            for outcome in (COMPILED, INVALID, FAILED):
                self.reconciles.labels(outcome)
            for kind in (PROVIDER_KEYS, ADMIN_TOKEN):
                for outcome in (WRITTEN, UNCHANGED, FAILED):
                    self.credentials.labels(kind, outcome)
        if certificate is not None:
            self.registry.register(self.certificate_expiry)
            self.registry.register(self.admission_reviews)
            for webhook in WEBHOOKS:
                for outcome in (ALLOWED, PATCHED, REFUSED, ERROR):
                    self.admission_reviews.labels(webhook, outcome)

    def refresh(self) -> None:
        """Bring what is read rather than counted up to date (before a rendering): the
        serving certificate, which cert-manager or the leading operator renews in place."""
        if self.certificate is not None:
            self.certificate_expiry.set(expiry(self.certificate))


@contextlib.contextmanager
def failures(counter: Counter, *labels: str) -> Iterator[None]:
    """Count the block's failure under ``labels`` and outcome ``FAILED``, then let it
    propagate: kopf or the watch retries what failed. A cancellation is not a failure."""
    try:
        yield
    except Exception:
        counter.labels(*labels, FAILED).inc()
        raise


def expiry(path: Path) -> float:
    """The first certificate's notAfter in ``path`` as unix time; 0 when unreadable (an
    alert on an expiry within days fires: the webhook cannot serve with it either)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        logger.warning("webhook certificate %s unreadable: %s", path, type(exc).__name__)
        return 0.0
    return cert.not_valid_after_utc.timestamp()
