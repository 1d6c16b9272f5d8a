"""The bounds issue 10 added to `listen` and `limits`: defaults and what is refused."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidegate.sidecar import hosts, settings


def test_a_budget_that_cannot_hold_one_largest_body_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least twice max_body_bytes"):
        settings.RequestLimits(max_body_bytes=8 * 1024 * 1024, memory_budget_bytes=8 * 1024 * 1024)
    limits = settings.RequestLimits()
    assert limits.memory_budget_bytes >= 2 * limits.max_body_bytes


def test_loopback_names_and_configured_hosts_are_allowed_with_any_port() -> None:
    allowed = hosts.allowed(settings.ListenSettings(allowed_hosts=["sidegate"]))
    for host in ("localhost:4000", "127.0.0.1", "[::1]:4000", "LOCALHOST.", "sidegate:4000", None):
        assert hosts.is_allowed(host, allowed), host
    for host in ("rebind.example:4000", "127.0.0.1.nip.io", "[::2]", "", "localhost.evil"):
        assert not hosts.is_allowed(host, allowed), host
