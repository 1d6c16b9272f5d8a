"""The security story's checks, against one real `sidegate sidecar` process.

Provider keys of both shapes (``sk-`` for OpenAI-style providers, ``sk-ant-`` for Anthropic),
made at run time, must be absent from every output of the sidecar (its answers, its log, its
metrics, its audit spool) under a battery of operations: normal calls on every endpoint,
errors of every kind, key rotations, malformed key files, a provider that echoes the key in
its 401, and tracebacks. Every provider connection is TLS 1.2 or later, with the chain and
host name verified. Injection attempts (headers, smuggling, path traversal, control
characters in prompt fields) are refused or neutralised, and never reach the provider.

Related checks live beside this file and are not repeated here: test_tls.py (the same TLS
rules on the in-process app, including a 1.3 minimum), test_leaks.py (in-process leak
scenarios), test_hostile_providers.py (hostile providers: key echoes in bodies and headers,
redirects, downgrades), tests/integration/test_hostile_clients.py (malformed HTTP, slow and
oversized clients) and the hostile-client corpus.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import time
import urllib.parse
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from sidegate import standin
from tests.conftest import base_config, fake_key, server_context
from tests.helpers.http import call, chat_body
from tests.helpers.servers import LoopThread
from tests.helpers.sidecars import exchange, post
from tests.security.pentest.watched_sidecar import WatchedSidecar, assert_clean, start
from tests.security.test_tls import legacy_server_context

CHAT = "/v1/chat/completions"
# Paths the stand-in provider may be asked for: anything else reaching it is a traversal.
PROVIDER_PATHS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/moderations",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/openai/deployments/",
)


@dataclasses.dataclass
class Connection:
    """What a provider saw of one request: the raw path and the TLS version it came over."""

    raw_path: str
    tls_version: str | None


@dataclasses.dataclass
class Rig:
    sidecar: WatchedSidecar
    state: standin.StandInState  # the main stand-in provider (TLS 1.2+)
    listeners: dict[str, standin.StandInState]  # the TLS variants
    keys: dict[str, str]  # key file name → key in force
    all_keys: set[str]  # every key any test made, for the leak checks
    credentials: Path
    connections: list[Connection]
    admin_token: str

    def publish(self, name: str, value: str | bytes) -> None:
        """Replace one key file the way an atomic writer does (rename over it)."""
        data = value.encode() if isinstance(value, str) else value
        temporary = self.credentials / f".{name}.{secrets.token_hex(4)}.tmp"
        temporary.write_bytes(data)
        os.replace(temporary, self.credentials / name)

    def check_outputs(self, mark: int, *answers: object) -> None:
        text = "\n".join(a if isinstance(a, str) else json.dumps(a, default=str) for a in answers)
        assert_clean(text + self.sidecar.log_since(mark), self.all_keys)


def recording(connections: list[Connection]) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        tls = request.transport.get_extra_info("ssl_object") if request.transport else None
        connections.append(Connection(request.raw_path, tls.version() if tls else None))
        return await handler(request)

    return record


def provider_app(state: standin.StandInState, connections: list[Connection]) -> web.Application:
    application = standin.create_app(state)
    application.middlewares.append(recording(connections))
    return application


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("llm-security")
    loop = LoopThread()
    connections: list[Connection] = []
    state = standin.StandInState()
    port = loop.serve(provider_app(state, connections), ssl_context=server_context(server_cert))
    variants = {
        "tls11": legacy_server_context(server_cert, ssl.TLSVersion.TLSv1_1),
        "tls12": legacy_server_context(server_cert, ssl.TLSVersion.TLSv1_2),
        "wrongname": server_context(ca.issue_cert("api.example.com")),
        "untrusted": server_context(trustme.CA().issue_cert("127.0.0.1")),
    }
    listeners: dict[str, standin.StandInState] = {}
    ports: dict[str, int] = {}
    for name, context in variants.items():
        listeners[name] = standin.StandInState()
        ports[name] = loop.serve(provider_app(listeners[name], connections), ssl_context=context)

    credentials = workdir / "credentials"
    credentials.mkdir()
    keys = {
        "openai": fake_key("sk-proj-"),
        "anthropic": fake_key("sk-ant-api03-"),
        "azure": secrets.token_hex(16),
        "compat": fake_key("sk-"),
        "slow": fake_key("sk-proj-"),
        **{name: fake_key("sk-proj-") for name in variants},
    }
    config: dict[str, Any] = base_config(port, ca_file, credentials)
    tls = {"ca_file": str(ca_file)}
    config["providers"]["slow"] = {
        "kind": "openai",
        "base_url": f"https://127.0.0.1:{port}/v1",
        "tls": tls,
        "timeouts": {"connect": 2, "read": 0.3},
    }
    config["routes"].insert(0, {"model": "slow-*", "provider": "slow"})
    config["routes"].insert(0, {"model": "azure-*", "provider": "azure"})
    for name in variants:
        config["providers"][name] = {
            "kind": "openai",
            "base_url": f"https://127.0.0.1:{ports[name]}/v1",
            "tls": tls,
            "timeouts": {"connect": 2, "read": 5},
        }
        config["routes"].insert(0, {"model": f"{name}-*", "provider": name})
    for name, key in keys.items():
        (credentials / name).write_text(key)
    for name, listener in listeners.items():
        listener.accepted_keys.add(keys[name])
    state.accepted_keys.update(keys.values())
    admin_token = secrets.token_urlsafe(24)
    token_file = workdir / "admin-token"
    token_file.write_text(admin_token)
    config["logging"] = {"access_log": True}
    sidecar = start(config, workdir, admin_token_file=token_file)
    all_keys = {*keys.values(), admin_token}
    yield Rig(sidecar, state, listeners, keys, all_keys, credentials, connections, admin_token)
    log = sidecar.stop()
    loop.close()
    with warnings.catch_warnings():  # refused handshakes' transports (as in test_tls.py)
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert_clean(log, all_keys)


def anthropic_body(**fields: Any) -> bytes:
    document = {
        "model": "claude-3-5-haiku",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}],
        **fields,
    }
    return json.dumps(document).encode()


NORMAL_CALLS: tuple[tuple[str, str, bytes | None, str], ...] = (
    ("POST", CHAT, chat_body(), "openai"),
    ("POST", CHAT, chat_body(stream=True), "openai"),
    ("POST", CHAT, chat_body(model="azure-chat"), "azure"),
    ("POST", CHAT, chat_body(model="local-model", stream=True), "compat"),
    ("POST", "/v1/completions", b'{"model": "gpt-4o-mini", "prompt": "hi"}', "openai"),
    ("POST", "/v1/embeddings", b'{"model": "text-embedding-3-small", "input": "hi"}', "openai"),
    ("POST", "/v1/moderations", b'{"model": "gpt-moderation", "input": "hi"}', "openai"),
    ("POST", "/v1/responses", b'{"model": "gpt-4o-mini", "input": "hi", "store": false}', "openai"),
    ("POST", "/v1/responses", b'{"model": "gpt-4o-mini", "input": "hi", "stream": true}', "openai"),
    ("POST", "/v1/messages", anthropic_body(), "anthropic"),
    ("POST", "/v1/messages", anthropic_body(stream=True), "anthropic"),
    (
        "POST",
        "/v1/messages/count_tokens",
        b'{"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}]}',
        "anthropic",
    ),
    ("GET", "/v1/models", None, ""),
)


@pytest.mark.parametrize(
    ("method", "path", "body", "provider"),
    NORMAL_CALLS,
    ids=[f"{m} {p} {'stream' if b and b'stream' in b else ''}" for m, p, b, _ in NORMAL_CALLS],
)
def test_normal_calls_carry_the_key_upstream_and_nowhere_else(
    rig: Rig, method: str, path: str, body: bytes | None, provider: str
) -> None:
    mark, before = rig.sidecar.mark(), len(rig.state.received)
    status, headers, answer = call(rig.sidecar.origin, path, body, method=method)
    assert status == 200, answer
    if provider:  # control: the right key did go upstream, so there was one to leak
        assert rig.state.received[before].key == rig.keys[provider]
    rig.check_outputs(mark, headers, answer)


def error_calls(rig: Rig) -> list[tuple[str, bytes, dict[str, str]]]:
    """Requests that fail, many quoting what the client sent: keys pasted into every field
    (some are served: a client's Authorization header or a malformed request id is ignored,
    not refused; their answers are checked all the same)."""
    pasted = rig.keys["openai"]
    pasted_ant = rig.keys["anthropic"]
    return [
        (CHAT, b"{bad json " + pasted.encode(), {}),
        (CHAT, chat_body(model=pasted), {}),
        (CHAT, chat_body(model="gpt-4o-mini", **{pasted: 1}), {}),
        (CHAT, chat_body(model="gpt-4o-mini", temperature=pasted_ant), {}),
        (CHAT, chat_body(), {"content-type": "text/plain; " + pasted}),
        (CHAT, chat_body(), {"authorization": "Bearer " + pasted}),
        (CHAT, chat_body(), {"x-request-id": pasted}),
        (CHAT, chat_body(), {"x-sidegate-tenant": pasted_ant}),
        ("/v1/messages", anthropic_body(model=pasted_ant), {"x-api-key": pasted_ant}),
        ("/v1/messages", b"[" * 5000 + pasted_ant.encode(), {}),
        (f"/v1/responses/{pasted}", b"", {}),
        (CHAT, chat_body(model="slow-model"), {}),  # 504: the provider is too slow
        (CHAT, chat_body(model="slow-model", stream=True), {}),
    ]


def test_every_error_path_masks_the_keys(rig: Rig) -> None:
    mark = rig.sidecar.mark()
    answers: list[object] = []
    rig.state.delay = 1.0  # only the "slow" provider (0.3 s read timeout) gives up
    try:
        for path, body, headers in error_calls(rig):
            method = "GET" if path.startswith("/v1/responses/") else "POST"
            status, answer_headers, answer = call(
                rig.sidecar.origin, path, body or None, headers, method=method
            )
            answers += [status, answer_headers, answer]
    finally:
        rig.state.delay = 0.0
    statuses = {a for a in answers if isinstance(a, int)}
    assert {400, 404, 415, 504} <= statuses, statuses  # control: the errors are the kinds meant
    # Control: the client's own text does come back where it is quoted, masked.
    assert "[REDACTED]" in json.dumps(answers)
    rig.check_outputs(mark, *answers)


@pytest.mark.parametrize(
    ("model", "path", "body"),
    [
        ("gpt-4o-mini", CHAT, chat_body()),
        ("gpt-4o-mini", CHAT, chat_body(stream=True)),
        ("azure-chat", CHAT, chat_body(model="azure-chat")),
        ("claude", "/v1/messages", anthropic_body()),
        ("claude", "/v1/messages", anthropic_body(stream=True)),
    ],
    ids=["openai", "openai-stream", "azure", "anthropic", "anthropic-stream"],
)
def test_a_provider_401_echoing_the_key_is_masked(
    rig: Rig, model: str, path: str, body: bytes
) -> None:
    mark = rig.sidecar.mark()
    accepted = set(rig.state.accepted_keys)
    rig.state.accepted_keys.clear()  # the provider refuses, quoting the key it got
    try:
        status, headers, answer = call(rig.sidecar.origin, path, body)
    finally:
        rig.state.accepted_keys.update(accepted)
    assert status == 401
    assert "Incorrect API key provided" in json.dumps(answer)  # control: it did echo
    rig.check_outputs(mark, headers, answer)


def wait_until_provider_sees(rig: Rig, key: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, _, _ = call(rig.sidecar.origin, CHAT, chat_body())
        if status == 200 and rig.state.received[-1].key == key:
            return
        time.sleep(0.05)
    pytest.fail(f"the sidecar did not take the new key within {timeout} s")


def test_a_rotation_with_overlap_leaks_neither_key(rig: Rig) -> None:
    mark = rig.sidecar.mark()
    old, new = rig.keys["openai"], fake_key("sk-proj-")
    rig.all_keys.add(new)
    rig.publish("openai.previous", old)
    rig.publish("openai", new)
    rig.state.accepted_keys.add(new)
    wait_until_provider_sees(rig, new)
    # The provider has not activated the new key yet: the sidecar retries once with the old.
    rig.state.accepted_keys.discard(new)
    status, _, answer = call(rig.sidecar.origin, CHAT, chat_body())
    assert status == 200
    assert [r.key for r in rig.state.received[-2:]] == [new, old]
    rig.state.accepted_keys.add(new)
    (rig.credentials / "openai.previous").unlink()  # the overlap window is over
    rig.keys["openai"] = new
    wait_until_provider_sees(rig, new)
    metrics = rig.sidecar.metrics()
    assert "sidegate_upstream_auth_retries_total" in metrics or "auth_retries" in metrics
    rig.check_outputs(mark, answer, metrics)


MALFORMED: dict[str, Callable[[str], bytes]] = {
    "two lines": lambda key: f"{key}\n{key}x\n".encode(),
    "a space inside": lambda key: f"{key[:10]} {key[10:]}".encode(),
    "a header injected": lambda key: f"{key}\r\nX-Injected: yes".encode(),
    "a control character": lambda key: f"{key}\x07".encode(),
    "not ASCII": lambda key: f"{key}é".encode(),
    "empty": lambda key: b"",
    "over 8 KiB": lambda key: (key * 400).encode(),
}


@pytest.mark.parametrize("shape", list(MALFORMED), ids=list(MALFORMED))
def test_a_malformed_key_file_is_refused_without_being_shown(rig: Rig, shape: str) -> None:
    mark = rig.sidecar.mark()
    in_force = rig.keys["openai"]
    candidate = fake_key("sk-proj-")
    rig.all_keys.add(candidate)
    rig.publish("openai", MALFORMED[shape](candidate))
    deadline = time.monotonic() + 10
    while "credential rejected" not in rig.sidecar.log_since(mark):
        assert time.monotonic() < deadline, "the bad file was not noticed"
        time.sleep(0.02)
    log = rig.sidecar.log_since(mark)
    assert '"provider": "openai"' in log
    assert "X-Injected" not in log
    status, _, answer = call(rig.sidecar.origin, CHAT, chat_body())
    assert status == 200 and rig.state.received[-1].key == in_force  # last good key stays
    assert not any("x-injected" in r.headers for r in rig.state.received)
    rig.check_outputs(mark, answer)
    rig.publish("openai", in_force)


TRACEBACK_CHILD = """
import logging, sys
from sidegate import logs, redact
redactor = redact.Redactor()
logs.configure(redactor, "INFO", sys.argv[3])
redactor.remember([redact.Secret(sys.argv[1])])

def authenticate(api_key):
    raise PermissionError(f"provider refused {api_key} and {sys.argv[2]}")

try:
    authenticate(sys.argv[1])
except PermissionError:
    logging.getLogger("sidegate.sidecar.proxying").exception("call failed", extra={"k": sys.argv[2]})
"""


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_a_traceback_through_the_sidecars_log_set_up_shows_no_key(rig: Rig, fmt: str) -> None:
    """No code path of the sidecar is known to log a traceback on purpose (the battery and the
    hostile corpora check that none does); should one appear, it goes through the same log
    set-up as the process's other lines. Here that set-up (``logs.configure``, as
    ``sidegate sidecar`` calls it) logs an exception whose message, arguments and frame hold
    a loaded ``sk-`` key and an ``sk-ant-`` key it never heard of."""
    loaded, unknown = fake_key("sk-proj-"), fake_key("sk-ant-api03-")
    child = subprocess.run(
        [sys.executable, "-c", TRACEBACK_CHILD, loaded, unknown, fmt],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert "Traceback" in child.stderr and "PermissionError" in child.stderr  # control
    assert "[REDACTED]" in child.stderr
    from tests.conftest import assert_no_secrets

    assert_no_secrets(child.stderr, {loaded, unknown})


# -- TLS to providers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("listener", "status", "codes"),
    [
        ("tls11", 502, ("upstream_tls", "upstream_unreachable")),
        ("tls12", 200, ()),
        ("wrongname", 502, ("upstream_tls",)),
        ("untrusted", 502, ("upstream_tls",)),
    ],
    ids=["tls-1.1-only-refused", "tls-1.2-accepted", "wrong-host-name", "untrusted-ca"],
)
def test_provider_tls(rig: Rig, listener: str, status: int, codes: tuple[str, ...]) -> None:
    mark = rig.sidecar.mark()
    received = rig.listeners[listener].received
    before = len(received)
    got, headers, answer = call(rig.sidecar.origin, CHAT, chat_body(model=f"{listener}-model"))
    assert got == status, answer
    if status == 200:
        assert received[before].key == rig.keys[listener]
        assert rig.connections[-1].tls_version == "TLSv1.2"
    else:
        assert answer["error"]["code"] in codes
        assert len(received) == before, "the request got past a refused handshake"
    rig.check_outputs(mark, headers, answer)


# -- injection ------------------------------------------------------------------------

HEADER_INJECTIONS = {
    # The sidecar sets the provider's auth itself; no client auth header goes upstream.
    "client auth headers": "Authorization: Bearer {canary}\r\nX-Api-Key: {canary}\r\n"
    "Api-Key: {canary}\r\nProxy-Authorization: Basic {canary}\r\nCookie: s={canary}\r\n",
    "forwarding headers": "X-Forwarded-For: {canary}\r\nX-Forwarded-Host: {canary}\r\n"
    "Forwarded: for={canary}\r\nX-Original-URL: /{canary}\r\n",
    "an upstream header smuggled in a value": "OpenAI-Beta: a\r\n\tX-Smuggled: {canary}\r\n",
    "a bare CR in a value": "OpenAI-Beta: a\rX-Smuggled: {canary}\r\n",
    "a bare LF in a value": "OpenAI-Beta: a\nX-Smuggled: {canary}\r\n",
    "a NUL in a value": "OpenAI-Beta: a\x00{canary}\r\n",
    "a space before the colon": "Authorization : Bearer {canary}\r\n",
}


@pytest.mark.parametrize("name", list(HEADER_INJECTIONS), ids=list(HEADER_INJECTIONS))
def test_header_injection_never_reaches_the_provider(rig: Rig, name: str) -> None:
    mark, before = rig.sidecar.mark(), len(rig.state.received)
    canary = "canary" + secrets.token_hex(8)
    extra = HEADER_INJECTIONS[name].format(canary=canary) + "Connection: close\r\n"
    raw = exchange(rig.sidecar.process, post(CHAT, chat_body(), extra=extra))
    status = int(raw.split(b" ", 2)[1])
    assert status in (200, 400), raw[:300]  # served without the header, or refused
    for request in rig.state.received[before:]:
        assert canary not in json.dumps(request.headers)
        assert request.key == rig.keys["openai"]
    assert canary.encode() not in raw
    rig.check_outputs(mark, raw.decode("latin-1"))


SMUGGLING = {
    "CL.TE": "Content-Length: {n}\r\nTransfer-Encoding: chunked\r\n",
    "TE.CL": "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    "two lengths": "Content-Length: {n}\r\nContent-Length: 5\r\n",
    "TE with a tab": "Transfer-Encoding:\tchunked\r\nContent-Length: {n}\r\n",
    "TE xchunked": "Transfer-Encoding: xchunked\r\n",
    "TE chunked, identity": "Transfer-Encoding: chunked, identity\r\n",
}


@pytest.mark.parametrize("name", list(SMUGGLING), ids=list(SMUGGLING))
def test_request_smuggling_is_refused(rig: Rig, name: str) -> None:
    """A second request hidden after the first must never be answered or forwarded."""
    mark, before = rig.sidecar.mark(), len(rig.state.received)
    hidden = chat_body(model="gpt-smuggled")
    body = b"0\r\n\r\n" + (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
        b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(hidden), hidden)
    )
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
        "\r\n" + SMUGGLING[name].format(n=len(body)) + "\r\n"
    )
    raw = exchange(rig.sidecar.process, head.encode() + body)
    assert re.match(rb"HTTP/1\.[01] 4\d\d ", raw), raw[:200]
    assert len(re.findall(rb"HTTP/1\.[01] \d{3} ", raw)) == 1  # one answer: nothing smuggled
    assert all(r.body.get("model") != "gpt-smuggled" for r in rig.state.received[before:])
    rig.check_outputs(mark, raw.decode("latin-1"))


TRAVERSALS = (
    ("POST", "/v1/../admin/v1/policies"),
    ("GET", "/v1/%2e%2e/admin/v1/policies"),
    ("POST", "/v1/chat/completions/../../../etc/passwd"),
    ("POST", "/v1/chat/completions%2f..%2f..%2fadmin"),
    ("GET", "/v1/responses/..%2f..%2fadmin%2fv1%2fpolicies"),
    ("GET", "/v1/responses/resp_1/../../../admin/v1/policies"),
    ("POST", "//v1/chat/completions"),
    ("GET", "/v1/models/..%5c..%5cadmin"),
    ("GET", "/admin/v1/policies"),
)


@pytest.mark.parametrize(("method", "path"), TRAVERSALS, ids=[p for _, p in TRAVERSALS])
def test_path_traversal_is_refused(rig: Rig, method: str, path: str) -> None:
    mark, before = rig.sidecar.mark(), len(rig.state.received)
    raw = exchange(
        rig.sidecar.process,
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(chat_body())}\r\nConnection: close\r\n\r\n".encode()
        + chat_body(),
    )
    status = int(raw.split(b" ", 2)[1])
    assert status in (400, 404, 405), raw[:300]
    assert b"items" not in raw  # no admin policy list on the proxy port
    assert len(rig.state.received) == before
    rig.check_outputs(mark, raw.decode("latin-1"))


@pytest.mark.parametrize("deployment", ["azure-../../v1/models", "azure-%2e%2e", "azure-a?b#c"])
def test_a_model_name_cannot_steer_the_provider_url(rig: Rig, deployment: str) -> None:
    """Azure puts the model in the URL: it goes as one percent-encoded path segment."""
    before = len(rig.connections)
    status, _, answer = call(rig.sidecar.origin, CHAT, chat_body(model=deployment))
    assert status in (200, 400), answer
    if status == 200:
        assert len(rig.connections) == before + 1  # control: it did reach the provider
    for connection in rig.connections[before:]:
        assert connection.raw_path.startswith("/openai/deployments/"), connection.raw_path
        segment = connection.raw_path.removeprefix("/openai/deployments/").split("/")[0]
        assert urllib.parse.unquote(segment) == deployment  # the whole name, one segment
        assert connection.raw_path.endswith("/chat/completions?api-version=2024-10-21")
        assert connection.raw_path.count("?") == 1 and "#" not in connection.raw_path


CONTROL_TEXT = (
    "line\r\nX-Injected: yes\r\n\r\nHTTP/1.1 200 OK",
    "nul\x00byte",
    "escape \x1b[31mred\x1b[0m and bell\x07",
    "bidi \u202egnp.exe",
    '{"level": "ERROR", "msg": "forged log line"}\n',
    "surrogates are not valid here: \udc80",
)


@pytest.mark.parametrize("text", CONTROL_TEXT, ids=range(len(CONTROL_TEXT)))
def test_control_characters_in_prompt_fields_are_neutralised(rig: Rig, text: str) -> None:
    """In the prompt: forwarded as JSON data, never interpreted, never logged. In the model
    name (which the sidecar does quote): a JSON error, and one well-formed log line each."""
    mark, before = rig.sidecar.mark(), len(rig.state.received)
    document = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    body = json.dumps(document).encode()  # ensure_ascii: \udc80 travels as an escape
    status, _, answer = call(rig.sidecar.origin, CHAT, body)
    if "\udc80" in text:
        assert status in (200, 400)
    else:
        assert status == 200, answer
        assert rig.state.received[before].body["messages"][0]["content"] == text
        assert "x-injected" not in rig.state.received[before].headers
    status, _, answer = call(rig.sidecar.origin, CHAT, chat_body(model="gpt-" + text))
    assert status in (200, 400, 404), answer
    assert isinstance(answer, dict)
    log = rig.sidecar.log_since(mark)
    for line in log.splitlines():
        json.loads(line)  # every line is one JSON record: nothing forged, nothing split
    assert "forged log line" not in log and "X-Injected" not in log
    rig.check_outputs(mark, answer)


def test_every_provider_connection_was_tls_1_2_or_later(rig: Rig) -> None:
    """Over everything this module sent: every request a provider received came over
    TLS 1.2 or 1.3 (the refused listeners received none)."""
    assert len(rig.connections) > 20  # control: the battery above did reach providers
    versions = {connection.tls_version for connection in rig.connections}
    assert versions <= {"TLSv1.2", "TLSv1.3"}, versions


def test_providers_were_only_ever_asked_for_their_api_paths(rig: Rig) -> None:
    """Over everything this module sent, traversals and injections included."""
    assert rig.connections  # control
    for connection in rig.connections:
        assert connection.raw_path.startswith(PROVIDER_PATHS), connection.raw_path
        assert "/../" not in connection.raw_path and "%2e%2e" not in connection.raw_path.lower()


def test_metrics_and_audit_spool_hold_no_key(rig: Rig) -> None:
    spool = rig.sidecar.spool_text()
    assert '"action"' in spool or '"actor"' in spool  # control: events were written
    metrics = rig.sidecar.metrics()
    assert "sidegate_requests_total" in metrics
    assert_clean(metrics + spool, rig.all_keys)
