"""Prometheus metrics of one sidecar, in a registry of its own (tests run several)."""

from __future__ import annotations

from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

M = TypeVar("M", bound=MetricWrapperBase)

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
        # `labels()` takes a lock and validates on every call; the hot path asks for the same
        # few children again and again. Label values are bounded (routes, providers, route
        # patterns, HTTP statuses), so is this cache.
        self._children: dict[tuple[Any, ...], Any] = {}
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
        self.policy_reloads = Counter(
            "sidegate_policy_reloads",
            "Policy source loads, by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.policy_serial = Gauge(
            "sidegate_policy_bundle_serial",
            "Serial of the signed bundle in force (refused bundles count in policy_reloads).",
            registry=r,
        )
        self.policies_loaded = Gauge(
            "sidegate_policies_loaded", "Policies in the bundle in force.", registry=r
        )
        self.denials = Counter(
            "sidegate_policy_denials",
            "Requests refused by policy, by reason code.",
            ["reason"],
            registry=r,
        )
        self.rate_limited = Counter(
            "sidegate_rate_limited",
            "Requests refused by a rate limit, by dimension (requests, tokens, concurrency).",
            ["dimension"],
            registry=r,
        )
        self.limiter_errors = Counter(
            "sidegate_rate_limiter_errors",
            "Rate-limit backend failures, by the fail mode applied (open, closed).",
            ["mode"],
            registry=r,
        )
        self.broker_polls = Counter(
            "sidegate_broker_polls",
            "Long-polls of the credential broker, by result (delivered, not_modified, "
            "refused, rejected, error).",
            ["result"],
            registry=r,
        )
        self.auth_retries = Counter(
            "sidegate_upstream_auth_retries",
            "Upstream 401s retried with the previous (rotation overlap) key.",
            ["provider"],
            registry=r,
        )
        self.memory_budget_used = Gauge(
            "sidegate_memory_budget_used_bytes",
            "Request and response bytes held right now, against limits.memory_budget_bytes.",
            registry=r,
        )
        self.refusals = Counter(
            "sidegate_refusals",
            "Requests refused before being read, by reason (memory_budget, in_flight, host).",
            ["reason"],
            registry=r,
        )
        self.policy_reload_failed = Gauge(
            "sidegate_policy_last_reload_failed",
            "1 when the last policy reload was rejected (the previous policy stays in force).",
            registry=r,
        )

    def child(self, metric: M, *labels: str) -> M:
        key = (id(metric), *labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found
