"""Sidegate: a security gateway for LLM traffic inside Kubernetes."""

__version__ = "0.1.0"

__all__ = ["__version__"]
