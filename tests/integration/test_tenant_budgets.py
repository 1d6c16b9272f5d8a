"""Tenant claims against sidecar processes: a claim never grants and never adds budget.

The scenario of issue 11: under ``requestsPerMinute: 3``, ten requests each claiming a fresh
random tenant must get exactly the service account's three, on the local backend and on a
shared Redis alike; ``free-tierX1..3`` cannot escape the ``free-tier`` sub-budget; a
service account with no policy gets nothing by claiming a tenant another one is granted.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidegate import standin
from tests.conftest import base_config, fake_key
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process, RedisServer, start_redis, start_sidecar

CHAT = "/v1/chat/completions"


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "sidegate.io/v1alpha1",
        "kind": "RBACPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": spec,
    }


ACCOUNT = [{"kind": "ServiceAccount", "name": "default"}]
ALLOW = [{"effect": "Allow", "models": ["*"]}]


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> Iterator[RedisServer | None]:
    if request.param == "local":
        yield None
        return
    server = start_redis(password=secrets.token_hex(12))
    yield server
    server.kill()


def sidecar(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    policies: list[dict[str, Any]],
    *,
    service_account: str = "default",
    redis_server: RedisServer | None = None,
) -> Process:
    port, state = provider
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("openai", "anthropic", "azure", "compat"):
        key = fake_key()
        (credentials / name).write_text(key)
        state.accepted_keys.add(key)
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "policies.yaml").write_text("\n---\n".join(json.dumps(p) for p in policies))
    raw = base_config(port, ca_file, credentials, directory)
    raw["identity"] = {"namespace": "default", "service_account": service_account}
    if redis_server is not None:
        (tmp_path / "redis-url").write_text(redis_server.url)
        (tmp_path / "redis-password").write_text(redis_server.password or "")
        raw["rate_limits"] = {
            "backend": "redis",
            "fail_mode": "closed",
            "redis": {
                "url_file": str(tmp_path / "redis-url"),
                "password_file": str(tmp_path / "redis-password"),
            },
        }
    return start_sidecar(raw, tmp_path)


def claim(origin: str, tenant: str, **headers: str) -> int:
    return call(origin, CHAT, chat_body(), {"x-sidegate-tenant": tenant, **headers})[0]


def test_ten_random_tenants_get_exactly_the_service_accounts_budget(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    backend: RedisServer | None,
) -> None:
    limited = policy("limited", {"subjects": ACCOUNT, "rules": ALLOW, "rateLimits": {}})
    limited["spec"]["rateLimits"] = {
        "requestsPerMinute": 3,
        "tenantOverrides": [{"tenant": "free-tier", "requestsPerMinute": 1}],
    }
    process = sidecar(tmp_path, provider, ca_file, [limited], redis_server=backend)
    try:
        statuses = [claim(process.origin, secrets.token_hex(6)) for _ in range(10)]
        assert statuses == [200] * 3 + [429] * 7
        # The sub-budget cannot be escaped by a lookalike either: all are out of the aggregate.
        assert [claim(process.origin, f"free-tierX{i}") for i in (1, 2, 3)] == [429] * 3
        # "sk-" inside a word is a name (limited like any other); a pasted key is refused.
        assert claim(process.origin, "risk-management") == 429
        assert claim(process.origin, "sk-" + secrets.token_hex(12)) == 400
        assert claim(process.origin, "team-sk-" + secrets.token_hex(12)) == 400
        # The same rule keeps a client's request id, or replaces it.
        _, headers, _ = call(process.origin, CHAT, chat_body(), {"x-request-id": "task-4242"})
        assert headers["x-request-id"] == "task-4242"
        pasted = "req-sk-" + secrets.token_hex(12)
        _, headers, _ = call(process.origin, CHAT, chat_body(), {"x-request-id": pasted})
        assert headers["x-request-id"] != pasted
    finally:
        process.stop()


def test_a_tenant_sub_budget_is_inside_the_aggregate(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    backend: RedisServer | None,
) -> None:
    limited = policy("limited", {"subjects": ACCOUNT, "rules": ALLOW})
    limited["spec"]["rateLimits"] = {
        "requestsPerMinute": 4,
        "tenantOverrides": [
            {"tenant": "free-tier", "requestsPerMinute": 1},
            {"tenant": "enterprise", "requestsPerMinute": 100},
        ],
    }
    process = sidecar(tmp_path, provider, ca_file, [limited], redis_server=backend)
    try:
        assert [claim(process.origin, "free-tier") for _ in range(2)] == [200, 429]
        # free-tier's refusal took nothing from the aggregate: three left, however claimed,
        # and a sub-budget looser than the aggregate does not lift it.
        assert claim(process.origin, "free-tierX1") == 200
        assert [claim(process.origin, "enterprise") for _ in range(3)] == [200, 200, 429]
        assert call(process.origin, CHAT, chat_body())[0] == 429
    finally:
        process.stop()


def test_a_claim_grants_nothing_to_an_account_without_a_policy(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    # acme's grant belongs to the "chatbot" service account; this sidecar runs as "default".
    chatbot = policy(
        "chatbot",
        {
            "subjects": [{"kind": "ServiceAccount", "name": "chatbot"}],
            "rules": [{"effect": "Allow", "models": ["*"], "tenants": ["acme"]}],
        },
    )
    process = sidecar(tmp_path, provider, ca_file, [chatbot])
    try:
        status, _, answer = call(process.origin, CHAT, chat_body(), {"x-sidegate-tenant": "acme"})
        assert (status, answer["error"]["code"]) == (403, "no_policy_for_caller")
    finally:
        process.stop()


def test_allowed_tenants_refuse_other_claims_and_a_tenant_deny_holds(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path
) -> None:
    listed = policy(
        "listed",
        {
            "subjects": ACCOUNT,
            "allowedTenants": ["acme", "globex"],
            "rules": [*ALLOW, {"effect": "Deny", "models": ["gpt-*"], "tenants": ["globex"]}],
        },
    )
    process = sidecar(tmp_path, provider, ca_file, [listed])
    try:
        assert claim(process.origin, "acme") == 200
        assert call(process.origin, CHAT, chat_body())[0] == 200
        status, _, answer = call(
            process.origin, CHAT, chat_body(), {"x-sidegate-tenant": "initech"}
        )
        assert (status, answer["error"]["code"]) == (403, "tenant_not_allowed")
        # The answer names the refused header, not the model: it is the claim that is wrong.
        assert answer["error"]["param"] == "x-sidegate-tenant"
        assert "'initech'" in answer["error"]["message"]
        status, _, answer = call(process.origin, CHAT, chat_body(), {"x-sidegate-tenant": "globex"})
        assert (status, answer["error"]["code"]) == (403, "denied_by_rule")
    finally:
        process.stop()


def test_a_client_request_id_does_not_share_a_concurrency_slot(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    backend: RedisServer | None,
) -> None:
    """Slots are keyed by an id the sidecar makes: two requests sending one x-request-id
    hold two slots (in Redis, one member would be one slot, and the first to finish would
    free the other's)."""
    limited = policy("limited", {"subjects": ACCOUNT, "rules": ALLOW})
    limited["spec"]["rateLimits"] = {"maxConcurrent": 2}
    _, state = provider
    state.delay = 1.0
    process = sidecar(tmp_path, provider, ca_file, [limited], redis_server=backend)
    try:
        same = {"x-request-id": "same-id"}
        results: list[int] = []
        threads = [
            threading.Thread(
                target=lambda: results.append(call(process.origin, CHAT, chat_body(), same)[0])
            )
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        deadline = 50
        while len(state.received) < 2 and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        status = call(process.origin, CHAT, chat_body(), same)[0]
        for thread in threads:
            thread.join()
        assert sorted(results) == [200, 200]
        assert status == 429  # two slots held, so the third is refused
    finally:
        state.delay = 0
        process.stop()
