"""Audit metrics, registered in the registry the program passes in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AuditMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "sidegate_audit_events",
            "Audit events, by result: written (fsync'd to the spool) or dropped.",
            ["result"],
            registry=registry,
        )
        self.spool_bytes = Gauge(
            "sidegate_audit_spool_bytes", "Bytes in the audit spool.", registry=registry
        )
        self.spool_healthy = Gauge(
            "sidegate_audit_spool_healthy",
            "1 while the spool can be written and has room.",
            registry=registry,
        )
        self.torn_lines = Counter(
            "sidegate_audit_torn_lines",
            "Torn last lines (a crash mid-write) dropped at start-up.",
            registry=registry,
        )
        self.commit_seconds = Histogram(
            "sidegate_audit_commit_seconds",
            "Time to write and fsync one group commit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
            registry=registry,
        )
        self.uploads = Counter(
            "sidegate_audit_uploads",
            "Segment uploads to S3, by result (ok, failed).",
            ["result"],
            registry=registry,
        )
        self.pending_segments = Gauge(
            "sidegate_audit_pending_segments",
            "Sealed segments waiting for upload.",
            registry=registry,
        )
