"""The broker: hands each injected sidecar what its namespace is entitled to (provider keys,
its signed bundle, its admin token, the Redis settings), after TokenReview and a check of the
pod's spec. Reads only its own namespace. Imports neither the sidecar nor the operator."""

from sidegate.broker import contents, kube, metrics, pods, reviews, running, server, watching

__all__ = ["contents", "kube", "metrics", "pods", "reviews", "running", "server", "watching"]
