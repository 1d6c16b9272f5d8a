"""Audit: the event schema and hash chain, the durable spool, the S3 export, verification.

Imported by the sidecar; imports neither the sidecar nor the operator.
"""

from sidegate.audit import events, exporting, metrics, spool, verifying

__all__ = ["events", "exporting", "metrics", "spool", "verifying"]
