"""Policies: the RBACPolicy model, bundles, and decisions. Pure: no I/O, no frameworks.

Imported by the sidecar and the operator; imports neither.
"""

from sidegate.policy import (
    bundle,
    caching,
    crd,
    delivery,
    documents,
    explaining,
    models,
    rules,
    signing,
)

__all__ = [
    "bundle",
    "caching",
    "crd",
    "delivery",
    "documents",
    "explaining",
    "models",
    "rules",
    "signing",
]
