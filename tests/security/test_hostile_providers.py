"""The hostile-provider corpus (tests/security/pentest/providers.py), case by case, against
one real `sidegate sidecar` process.

Each case's request goes from a raw socket (as any app's HTTP client would send it) through
the sidecar to a raw provider playing the case's script. The run checks what the case says
the app must see, that a TLS case's provider never got the request, that a redirect's target
heard nothing, and that the answer and the log lines the case produced hold no key and no
traceback; the last test checks the whole log, /metrics and the audit spool the same way.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import re
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.conftest import assert_no_secrets, base_config, fake_key, server_context
from tests.helpers.http import chat_body
from tests.helpers.servers import LoopThread
from tests.helpers.sidecars import exchange, post
from tests.security.pentest import found_by_pentest, providers
from tests.security.pentest.cases import Case
from tests.security.pentest.hostile_provider import (
    GzipBomb,
    HostileProvider,
    Script,
    Seen,
    gzip_bomb,
)
from tests.security.pentest.watched_sidecar import WatchedSidecar, assert_clean, start
from tests.security.test_tls import legacy_server_context

LISTENERS = (
    "hostile",
    "tls1.0",
    "tls1.1",
    "tls1.2",
    "wrong-name",
    "untrusted",
    "expired",
    "plaintext",
)


def provider_name(listener: str) -> str:
    return listener.replace(".", "")


def model_for(case: Case) -> str:
    payload = case.payload
    assert isinstance(payload, providers.Hostile)
    return f"{payload.listener}--{case.id.lower()}"


@dataclasses.dataclass
class Rig:
    sidecar: WatchedSidecar
    listeners: dict[str, HostileProvider]
    elsewhere: HostileProvider
    keys: set[str]


def contexts(ca: trustme.CA, cert: trustme.LeafCert) -> dict[str, ssl.SSLContext | None]:
    now = datetime.datetime.now(datetime.UTC)
    built: dict[str, ssl.SSLContext | None] = {
        "hostile": server_context(cert),
        "tls1.0": legacy_server_context(cert, ssl.TLSVersion.TLSv1),
        "tls1.1": legacy_server_context(cert, ssl.TLSVersion.TLSv1_1),
        "tls1.2": legacy_server_context(cert, ssl.TLSVersion.TLSv1_2),
        "wrong-name": server_context(ca.issue_cert("api.example.com")),
        "untrusted": server_context(trustme.CA().issue_cert("127.0.0.1")),
        "expired": server_context(
            ca.issue_cert(
                "127.0.0.1",
                not_before=now - datetime.timedelta(days=2),
                not_after=now - datetime.timedelta(days=1),
            )
        ),
        "plaintext": None,
    }
    return built


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("hostile-providers")
    for case in providers.CASES:  # made now, so no case waits on zlib mid-answer
        for step in case.payload.steps if isinstance(case.payload, providers.Hostile) else ():
            if isinstance(step, GzipBomb):
                gzip_bomb(step.size, step.fill)
    loop = LoopThread()
    by_model = {model_for(case): case.payload for case in providers.CASES}
    elsewhere = HostileProvider(
        loop, server_context(server_cert), lambda _: Script((providers.OK,))
    )
    origin_elsewhere = f"https://127.0.0.1:{elsewhere.port}".encode()

    def choose(seen: Seen) -> Script:
        payload = by_model.get(seen.model)
        assert isinstance(payload, providers.Hostile), f"no case for {seen.model!r}"
        return payload.script

    def render(seen: Seen, data: bytes) -> bytes:
        auth = seen.headers.get("authorization", "").removeprefix("Bearer ")
        key = (seen.headers.get("x-api-key") or auth).encode()
        return data.replace(providers.KEY, key).replace(b"{ELSEWHERE}", origin_elsewhere)

    listeners = {
        name: HostileProvider(
            loop, context, choose, render, greeting=providers.OK if context is None else b""
        )
        for name, context in contexts(ca, server_cert).items()
    }
    credentials = workdir / "credentials"
    credentials.mkdir()
    keys: set[str] = set()
    config: dict[str, Any] = base_config(listeners["hostile"].port, ca_file, credentials)
    config["providers"], config["routes"] = {}, []
    timeouts = {"connect": 2, "read": providers.READ_TIMEOUT}
    tls = {"ca_file": str(ca_file)}
    for listener in (*LISTENERS, "hostile-anthropic"):
        server = listeners[listener.removesuffix("-anthropic")]
        name = provider_name(listener)
        anthropic = listener == "hostile-anthropic"
        key = fake_key("sk-ant-api03-" if anthropic else "sk-proj-")
        (credentials / name).write_text(key)
        keys.add(key)
        origin = f"https://127.0.0.1:{server.port}"
        config["providers"][name] = {
            "kind": "anthropic" if anthropic else "openai",
            "base_url": origin if anthropic else origin + "/v1",
            "tls": tls,
            "timeouts": timeouts,
        }
        config["routes"].append({"model": f"{listener}--*", "provider": name})
    config["limits"] = {
        "max_response_bytes": providers.MAX_RESPONSE_BYTES,
        "max_sse_event_bytes": providers.MAX_EVENT_BYTES,
    }
    # No drain at teardown, and a short grace: a case that went wrong must not turn the
    # stop into a second failure (the defaults, 5 s + 20 s, outlast stop()'s 20 s wait).
    config["listen"] = {**config.get("listen", {}), "drain_seconds": 0, "shutdown_grace_seconds": 3}
    sidecar = start(config, workdir)
    yield Rig(sidecar, listeners, elsewhere, keys)
    sidecar.stop()
    for server in (*listeners.values(), elsewhere):
        server.close()
    loop.close()
    # asyncio's server side leaves the transports of refused TLS handshakes to the garbage
    # collector; that test server's leak is not the sidecar's (as in test_tls.py).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    complete: bool  # a chunked body's terminating chunk arrived (always True when not chunked)

    def error_code(self) -> str | None:
        try:
            document = json.loads(self.body)
        except ValueError:
            return None
        error = document.get("error") if isinstance(document, dict) else None
        return error.get("code") if isinstance(error, dict) else None


def parse(raw: bytes) -> Answer:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    status = int(lines[0].split()[1])
    if headers.get("transfer-encoding", "").lower() != "chunked":
        return Answer(status, headers, rest, True)
    body = b""
    while True:
        size_line, found, rest = rest.partition(b"\r\n")
        if not found:
            return Answer(status, headers, body, False)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return Answer(status, headers, body, True)
        body, rest = body + rest[:size], rest[size + 2 :]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def request_for(case: Case, hostile: providers.Hostile) -> tuple[str, bytes]:
    model = model_for(case)
    if hostile.dialect == "anthropic":
        message = {
            "model": model,
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": hostile.stream,
        }
        return "/v1/messages", json.dumps(message).encode()
    return "/v1/chat/completions", chat_body(model=model, stream=hostile.stream)


@pytest.mark.parametrize("case", providers.CASES, ids=lambda case: case.id)
def test_hostile_provider(rig: Rig, case: Case) -> None:
    hostile = case.payload
    assert isinstance(hostile, providers.Hostile)
    listener = rig.listeners[hostile.listener.removesuffix("-anthropic")]
    mark, received = rig.sidecar.mark(), len(listener.seen)
    path, body = request_for(case, hostile)
    raw = exchange(rig.sidecar.process, post(path, body, extra="Connection: close\r\n"), 20)
    answer = parse(raw)

    statuses = hostile.status if isinstance(hostile.status, tuple) else (hostile.status,)
    assert answer.status in statuses, (case.expected, raw[:600])
    if hostile.code is not None:
        codes = hostile.code if isinstance(hostile.code, tuple) else (hostile.code,)
        if answer.status >= 400:
            assert answer.error_code() in codes, (case.expected, answer.body[:600])
        else:  # a stream that failed after its status line: the error event says why
            assert any(f'"code": "{code}"'.encode() in answer.body for code in codes), (
                case.expected,
                answer.body[-600:],
            )
    if hostile.stream and answer.headers.get("content-type") == "text/event-stream":
        assert answer.complete is hostile.complete, (case.expected, answer.body[-300:])
    for needle in hostile.relayed:
        assert needle in answer.body, (case.expected, needle, answer.body[:300])
    for needle in hostile.withheld:
        assert needle.lower() not in raw.lower(), (case.expected, needle)
    assert (len(listener.seen) > received) is hostile.reaches_provider
    assert not rig.elsewhere.seen, "a redirect was followed"
    if hostile.peak_rss_mib is not None:
        peak = peak_rss_mib(rig.sidecar.process.process.pid)
        assert peak < hostile.peak_rss_mib, peak
    # The answer may carry the provider's own text (even its traceback, HP-ECHO-04), never a
    # key, and never the sidecar's own internal error; its log holds neither a key nor a
    # traceback.
    assert_no_secrets(raw.decode("latin-1"), rig.keys)
    assert b"internal_error" not in raw
    assert_clean(rig.sidecar.log_since(mark), rig.keys)


def test_every_output_stays_clean_after_the_corpus(rig: Rig) -> None:
    """The whole log, /metrics and the audit spool, after every case above has run."""
    assert rig.sidecar.process.process.poll() is None, "the sidecar died"
    outputs = rig.sidecar.outputs()
    assert "sidegate_requests_total" in outputs  # control: the metrics were read
    assert '"action"' in rig.sidecar.spool_text() or rig.sidecar.spool.exists()
    assert_clean(outputs, rig.keys)
    assert "internal_error" not in outputs


def test_the_findings_cite_cases_and_tests_that_exist() -> None:
    """found_by_pentest.FINDINGS is what the audit report's findings table is made of: every
    test and case it cites must exist, so the table cannot point at nothing."""
    root = Path(__file__).parents[2]
    case_ids = {case.id for case in providers.CASES}
    assert len(case_ids) == len(providers.CASES), "case ids are not unique"
    ids = [finding.id for finding in found_by_pentest.FINDINGS]
    assert len(set(ids)) == len(ids)
    for finding in found_by_pentest.FINDINGS:
        assert finding.severity in ("critical", "high", "medium", "low", "info"), finding.id
        assert finding.status in ("fixed", "mitigated", "accepted", "open"), finding.id
        for path, function in re.findall(r"(tests/[\w/]+\.py)::(\w+)", finding.evidence):
            assert f"def {function}(" in (root / path).read_text(), (finding.id, function)
        for cited in re.findall(r"HP-[A-Z]+-\d+", finding.evidence):
            assert cited in case_ids, (finding.id, cited)
        if finding.status == "fixed":
            assert re.search(r"fix [0-9a-f]{7,40}", finding.evidence), finding.id
