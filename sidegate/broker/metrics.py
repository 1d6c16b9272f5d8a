"""Prometheus metrics of one broker replica, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.answers = Counter(
            "sidegate_broker_answers",
            "Delivery requests answered, by status and reason code (ok, not_modified, ...).",
            ["status", "code"],
            registry=r,
        )
        self.waiting = Gauge(
            "sidegate_broker_waiting", "Long-polls waiting for a new version.", registry=r
        )
        self.token_reviews = Counter(
            "sidegate_broker_token_reviews",
            "TokenReviews sent to the API server, by result (accepted, refused, error).",
            ["result"],
            registry=r,
        )
        self.pod_checks = Counter(
            "sidegate_broker_pod_checks",
            "Pod specs read and checked, by result (ok or the refusal code).",
            ["result"],
            registry=r,
        )
        self.audit_keys = Counter(
            "sidegate_broker_audit_keys",
            "Sidecar audit keys registered, by result (registered, malformed).",
            ["result"],
            registry=r,
        )
        self.namespaces = Gauge(
            "sidegate_broker_namespaces", "Namespaces served (with a bundle).", registry=r
        )
        self.cert_reloads = Counter(
            "sidegate_broker_certificate_reloads",
            "Serving certificate reloads, by result (ok, failed).",
            ["result"],
            registry=r,
        )
