"""Audit: the event schema and hash chain, the durable spool, signed digests, the S3 export,
verification.

Imported by the sidecar; imports neither the sidecar nor the operator.
"""

from sidegate.audit import digests, events, exporting, metrics, signing, spool, verifying

__all__ = ["digests", "events", "exporting", "metrics", "signing", "spool", "verifying"]
