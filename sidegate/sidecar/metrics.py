"""Prometheus metrics of one sidecar, in a registry of its own (tests run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Proxied LLM calls take from milliseconds (embeddings) to minutes (long streams).
_REQUEST_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "sidegate_requests",
            "Requests answered, by route, provider, model route and HTTP status.",
            ["route", "provider", "model", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "sidegate_request_duration_seconds",
            "Whole request time in the sidecar, streams until their last byte.",
            ["route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_seconds = Histogram(
            "sidegate_upstream_duration_seconds",
            "Time from sending upstream to the provider's response headers.",
            ["provider"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "sidegate_tokens",
            "Tokens reported by providers, by provider, model route and direction.",
            ["provider", "model", "direction"],
            registry=r,
        )
        self.credential_reloads = Counter(
            "sidegate_credential_reloads",
            "Credential file loads, by provider and result (ok, failed).",
            ["provider", "result"],
            registry=r,
        )
        self.credential_loaded = Gauge(
            "sidegate_credential_loaded",
            "1 when a key is in force for the provider.",
            ["provider"],
            registry=r,
        )
        self.auth_retries = Counter(
            "sidegate_upstream_auth_retries",
            "Upstream 401s retried with the previous (rotation overlap) key.",
            ["provider"],
            registry=r,
        )
