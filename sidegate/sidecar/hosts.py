"""The Host header check: a sidecar on loopback answers only to loopback names.

A browser visiting a page whose DNS name rebinds to 127.0.0.1 sends that name as Host;
without this check its scripts could spend the provider keys (DNS rebinding). Ports are not
compared: the sidecar may be reached through a port mapping.
"""

from __future__ import annotations

from sidegate.sidecar import settings

_LOOPBACK = ("localhost", "127.0.0.1", "::1")


def allowed(listen: settings.ListenSettings) -> frozenset[str]:
    names = {*_LOOPBACK, listen.host, *listen.allowed_hosts}
    return frozenset(name.strip("[]").lower() for name in names)


def hostname(host: str) -> str:
    """The name part of a Host header value: ``[::1]:4000`` → ``::1``, ``a:80`` → ``a``."""
    if host.startswith("["):
        return host[1 : host.find("]")].lower() if "]" in host else ""
    name, _, _ = host.partition(":")
    return name.lower().rstrip(".")


def is_allowed(host: str | None, names: frozenset[str]) -> bool:
    # HTTP/1.1 requires Host (RFC 9112 §3.2); an HTTP/1.0 client without one is local.
    return host is None or hostname(host) in names
