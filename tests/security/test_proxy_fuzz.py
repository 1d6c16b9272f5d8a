"""A property fuzz of every proxied endpoint, through a real `sidegate sidecar` process to the
stand-in provider: whatever a client sends, the sidecar answers with no 5xx of its own (a 5xx
is allowed only when the provider answered one, or the error code says the provider failed),
the answer is JSON or the provider's own bytes, and nothing reaches the sidecar's output that
holds a key or a traceback.

The bodies are near-misses of each endpoint's shape (routed and unrouted models, fields of
the wrong type, control characters and non-BMP text, huge numbers, unknown fields), arbitrary
JSON, and arbitrary bytes; headers vary the content type, tenant, request id and the
headers the sidecar forwards. tests/property/test_fuzz_parsing.py fuzzes the parsers in
process; this one fuzzes the whole path on real sockets.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidegate import standin
from tests.conftest import base_config, fake_key, server_context
from tests.helpers.http import call
from tests.helpers.servers import LoopThread
from tests.security.pentest.watched_sidecar import WatchedSidecar, assert_clean, start

EXAMPLES = 30  # per endpoint: about 270 requests in all

ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/models",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses/{id}",
)


@dataclasses.dataclass
class Rig:
    sidecar: WatchedSidecar
    upstream_failures: list[int]  # statuses >= 500 the provider answered
    keys: set[str]


def counting(failures: list[int]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def count(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 500:
                failures.append(exc.status)
            raise
        except Exception:  # the stand-in choked on a body no real provider would accept
            failures.append(500)
            raise
        if response.status >= 500:
            failures.append(response.status)
        return response

    return count


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, server_cert: trustme.LeafCert, ca_file: Path
) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("proxy-fuzz")
    loop = LoopThread()
    state = standin.StandInState(record=False)
    failures: list[int] = []
    application = standin.create_app(state)
    application.middlewares.append(counting(failures))
    port = loop.serve(application, ssl_context=server_context(server_cert))
    credentials = workdir / "credentials"
    credentials.mkdir()
    keys = {
        "openai": fake_key("sk-proj-"),
        "anthropic": fake_key("sk-ant-api03-"),
        "azure": fake_key("sk-"),
        "compat": fake_key("sk-"),
    }
    for name, key in keys.items():
        (credentials / name).write_text(key)
    state.accepted_keys.update(keys.values())
    config: dict[str, Any] = base_config(port, ca_file, credentials)
    config["limits"] = {"max_body_bytes": 64 * 1024, "memory_budget_bytes": 1024 * 1024}
    sidecar = start(config, workdir)
    yield Rig(sidecar, failures, set(keys.values()))
    log = sidecar.stop()
    loop.close()
    assert_clean(log, set(keys.values()))


MODELS = st.sampled_from(
    [
        "gpt-4o-mini",
        "gpt-renamed",
        "text-embedding-3-small",
        "claude-3-5-haiku",
        "azure-chat",
        "local-model",
        "omni-moderation-latest",
        "",
    ]
) | st.text(max_size=24)
TEXT = st.text(max_size=40) | st.sampled_from(["\x00", "\r\n\r\n", "\u202e", "\U0001f600", "é"])
LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT
JSON = st.recursive(
    LEAF,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXT, children, max_size=3),
    max_leaves=12,
)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool"]) | TEXT},
    optional={"content": TEXT | JSON, "name": TEXT},
)
FIELDS = {
    "messages": st.lists(MESSAGE, max_size=3) | JSON,
    "input": TEXT | st.lists(TEXT, max_size=3) | JSON,
    "prompt": TEXT | JSON,
    "stream": st.booleans() | JSON,
    "max_tokens": st.integers(min_value=-2, max_value=2**64) | JSON,
    "temperature": st.floats(allow_nan=False) | JSON,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}) | JSON,
    "store": st.booleans() | JSON,
    "previous_response_id": TEXT,
    "n": st.integers(min_value=-1, max_value=10**9),
    "system": TEXT | JSON,
    "unknown_field": JSON,
}
SHAPED = st.fixed_dictionaries({"model": MODELS | JSON}, optional=FIELDS)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["shaped", "shaped", "shaped", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    document = draw(SHAPED if kind == "shaped" else JSON)
    return json.dumps(document, ensure_ascii=draw(st.booleans())).encode()


HEADER_VALUE = st.from_regex(r"\A[ -~]{0,40}\Z")
HEADERS = st.fixed_dictionaries(
    {
        "content-type": st.sampled_from(
            ["application/json", "application/json; charset=utf-8", "text/plain", ""]
        )
    },
    optional={
        "x-sidegate-tenant": HEADER_VALUE,
        "x-request-id": HEADER_VALUE,
        "anthropic-version": HEADER_VALUE,
        "openai-beta": HEADER_VALUE,
        "accept": st.sampled_from(["text/event-stream", "*/*", "application/json"]),
    },
)
METHODS = st.sampled_from(["POST", "POST", "POST", "GET", "DELETE", "PUT"])
RESPONSE_IDS = st.from_regex(r"\A[A-Za-z0-9_%./-]{0,30}\Z")


# One well-formed call per endpoint, run first (hypothesis's explicit example): the control
# that the fuzz does reach the provider. A stored response no one created is a 404.
GOOD: dict[str, tuple[dict[str, Any], int]] = {
    "/v1/chat/completions": (
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
        200,
    ),
    "/v1/responses": ({"model": "gpt-4o-mini", "input": "x", "store": False}, 200),
    "/v1/completions": ({"model": "gpt-4o-mini", "prompt": "x"}, 200),
    "/v1/embeddings": ({"model": "text-embedding-3-small", "input": "x"}, 200),
    "/v1/moderations": ({"model": "gpt-moderation", "input": "x"}, 200),
    "/v1/models": ({}, 200),
    "/v1/messages": (
        {
            "model": "claude-3-5-haiku",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
        200,
    ),
    "/v1/messages/count_tokens": (
        {"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "x"}]},
        200,
    ),
    "/v1/responses/{id}": ({}, 403),
}


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_no_5xx_of_its_own_and_no_traceback(rig: Rig, endpoint: str) -> None:
    mark = rig.sidecar.mark()
    good, good_status = GOOD[endpoint]
    statuses: list[int] = []

    @example(
        body=json.dumps(good).encode(),
        headers={"content-type": "application/json"},
        method="GET" if endpoint.endswith(("models", "{id}")) else "POST",
        response_id="resp_nobodys",
    )
    @given(body=bodies(), headers=HEADERS, method=METHODS, response_id=RESPONSE_IDS)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    def requests(body: bytes, headers: dict[str, str], method: str, response_id: str) -> None:
        path = endpoint.replace("{id}", response_id)
        if endpoint == "/v1/models":
            method = "GET"
        failures = len(rig.upstream_failures)
        status, answer_headers, answer = call(
            rig.sidecar.origin, path, body if method != "GET" else None, headers, method
        )
        statuses.append(status)
        upstream_failed = len(rig.upstream_failures) > failures
        error = answer.get("error") if isinstance(answer, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        if status >= 500:
            assert upstream_failed or str(code).startswith("upstream_"), (status, answer)
        assert code != "internal_error"
        if not upstream_failed:  # an answer of the sidecar's own is JSON
            assert isinstance(answer, dict) or status < 300, (status, answer)
        assert_clean(json.dumps([answer_headers, answer], default=str), rig.keys)

    requests()
    assert statuses[0] == good_status, statuses[:1]  # control: the explicit example ran first
    if endpoint != "/v1/models":  # a GET with no body: mostly the same answer, rightly
        assert len(set(statuses)) > 1, statuses  # the fuzz went beyond the control
    assert_clean(rig.sidecar.log_since(mark), rig.keys)


def test_the_sidecar_outlived_the_fuzz_and_its_outputs_are_clean(rig: Rig) -> None:
    assert rig.sidecar.process.process.poll() is None
    assert_clean(rig.sidecar.outputs(), rig.keys)
