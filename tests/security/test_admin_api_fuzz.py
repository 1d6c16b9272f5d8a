"""Schemathesis against the admin API's own OpenAPI document (``GET /admin/v1/openapi.json``),
served by a real `sidegate sidecar` process in standalone mode (policy writes allowed).

Every operation the document names is called with generated valid and invalid input, with
and without the token: no 5xx, every status and body the document declares, invalid input
refused, the token never ignored. The sidecar's whole output is then checked for keys and
tracebacks.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from sidegate.sidecar import admin as admin_api
from tests.conftest import base_config, fake_key
from tests.helpers.http import call
from tests.security.pentest.watched_sidecar import WatchedSidecar, assert_clean, start

EXAMPLES = 15  # per operation and mode: 12 runs, about 180 calls


@pytest.fixture(scope="module")
def admin(
    tmp_path_factory: pytest.TempPathFactory, ca_file: Path
) -> Iterator[tuple[WatchedSidecar, str, set[str]]]:
    workdir = tmp_path_factory.mktemp("admin-fuzz")
    credentials = workdir / "credentials"
    credentials.mkdir()
    keys = {"openai": fake_key("sk-proj-"), "anthropic": fake_key("sk-ant-api03-")}
    for name in ("openai", "anthropic", "azure", "compat"):
        (credentials / name).write_text(keys.get(name, fake_key()))
    token = secrets.token_urlsafe(24)
    token_file = workdir / "admin-token"
    token_file.write_text(token)
    # No provider is called: the admin API answers from the policy directory alone.
    config: dict[str, Any] = base_config(1, ca_file, credentials)
    sidecar = start(config, workdir, admin_token_file=token_file)
    secrets_in_play = {*keys.values(), token}
    yield sidecar, token, secrets_in_play
    log = sidecar.stop()
    assert_clean(log, secrets_in_play)


# The document the admin API serves, loaded from the code that serves it so the operations
# are known at collection time; the first test proves the served one is the same.
SCHEMA = schemathesis.openapi.from_dict(admin_api.openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


def test_the_served_document_is_the_one_fuzzed(
    admin: tuple[WatchedSidecar, str, set[str]],
) -> None:
    sidecar, token, _ = admin
    status, _, served = call(
        sidecar.admin_origin, "/admin/v1/openapi.json", None, bearer(token), "GET"
    )
    assert status == 200 and served == admin_api.openapi()


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.mark.parametrize("mode", MODES, ids=[mode.value for mode in MODES])
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_admin_api_keeps_to_its_openapi_document(
    admin: tuple[WatchedSidecar, str, set[str]],
    operation: Any,
    mode: schemathesis.GenerationMode,
) -> None:
    """Generated calls (valid, then invalid) of one operation: no 5xx, every status, header
    and body as documented, invalid input refused, valid input accepted, the token not
    ignored (schemathesis's default checks)."""
    sidecar, token, secrets_in_play = admin
    mark = sidecar.mark()
    # A PUT body must repeat the URL's namespace and name, and a spec passes the policy
    # model's cross-field rules: OpenAPI can state neither, so a schema-valid PUT may rightly
    # be a 422 (documented). Every other check, negative data included, still applies.
    excluded = [positive_data_acceptance] if operation.method.upper() == "PUT" else []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def calls(case: schemathesis.Case) -> None:
        response = case.call(base_url=sidecar.admin_origin, headers=bearer(token))
        case.validate_response(response, headers=bearer(token), excluded_checks=excluded)
        assert_clean(response.text, secrets_in_play)

    calls()
    assert_clean(sidecar.log_since(mark), secrets_in_play)


def test_a_body_nested_past_the_decoders_stack_is_a_400(
    admin: tuple[WatchedSidecar, str, set[str]],
) -> None:
    """Found while fuzzing: json raised RecursionError (not ValueError) on a deeply nested
    PUT body, and the admin API answered 500 with a traceback in the log."""
    sidecar, token, secrets_in_play = admin
    mark = sidecar.mark()
    status, _, answer = call(
        sidecar.admin_origin,
        "/admin/v1/policies/default/deep",
        b"[" * 100_000 + b"]" * 100_000,
        bearer(token),
        method="PUT",
    )
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_request"
    assert_clean(json.dumps(answer) + sidecar.log_since(mark), secrets_in_play)


def test_everything_the_fuzzing_left_behind_is_clean(
    admin: tuple[WatchedSidecar, str, set[str]],
) -> None:
    sidecar, _, secrets_in_play = admin
    assert sidecar.process.process.poll() is None, "the sidecar died"
    assert_clean(sidecar.outputs(), secrets_in_play)


def test_the_proxy_port_does_not_serve_the_admin_api(
    admin: tuple[WatchedSidecar, str, set[str]],
) -> None:
    sidecar, token, _ = admin
    status, _, _ = call(sidecar.origin, "/admin/v1/policies", None, bearer(token), "GET")
    assert status == 404
