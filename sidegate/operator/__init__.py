"""The Sidegate operator (kopf): RBACPolicy objects become per-namespace bundle Secrets.

Imports ``sidegate.policy``; never the sidecar.
"""
