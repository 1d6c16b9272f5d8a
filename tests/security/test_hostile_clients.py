"""The hostile-client penetration test: every case of ``tests/security/pentest/clients.py``
sent over a raw socket to one real ``sidegate sidecar`` process in front of a recording
stand-in provider.

Each case's own expectation is checked (status, error code, answers on the connection,
requests of the case at the provider, the sidecar's timeouts); then the provider side as a
whole (it saw only requests the corpus meant to reach it, only at canonical paths, only with
the sidecar's key, never a client credential or canary); then every output: each answer and
the sidecar's whole log, for canaries, loaded keys, key-shaped text and tracebacks.

The cases run a few at a time on one sidecar: slow ones wait on the sidecar's own (short)
timeouts, so the run takes about as long as the slowest case plus the rest.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from sidegate import standin
from tests.conftest import KEY_SHAPES, server_context
from tests.helpers.processes import Process
from tests.helpers.servers import LoopThread
from tests.helpers.sidecars import address, sidecar_process
from tests.security.pentest import clients
from tests.security.pentest.cases import Case

CASE_TAG = re.compile(r"pentest (SG-C-[A-Z]{2}-\d{3})(?!\d)")
# Seconds without new bytes after the expected answers, to see that no further (smuggled)
# answer follows; and the longest any case may take when it names no ``within``.
QUIET = 0.3
DEADLINE = 6.0
# Client headers that must never reach a provider, whatever the case.
NEVER_UPSTREAM = (
    "cookie",
    "proxy-authorization",
    "x-forwarded-for",
    "x-forwarded-host",
    "forwarded",
    "x-forwarded-authorization",
    "x-auth-token",
    "x-goog-api-key",
    "x-request-id",
    "x-sidegate-tenant",
    "x-http-method-override",
    "upgrade",
    "http2-settings",
    "openai-organization",
    "openai-project",
    "expect",
)


def canary() -> str:
    """A key-shaped value as long as the placeholder, made at run time."""
    value = "sk-pentest-" + secrets.token_hex(20)
    return value[: len(clients.CANARY)]


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Result:
    raw: bytes
    answers: list[Answer]
    closed: bool
    answered: float  # seconds from the first byte sent to the last expected answer
    seconds: float  # from the first byte sent to the close (or to the end of reading)
    canary: str


def parse_answers(data: bytes, closed: bool) -> tuple[list[Answer], bool]:
    """The complete HTTP answers in ``data`` (interim 1xx skipped), and whether the bytes
    end on an answer's boundary. On a closed connection an answer whose head is complete
    counts even if its body is cut (a HEAD answer, a body up to the close)."""
    answers: list[Answer] = []
    rest = data
    while rest:
        head, separator, after = rest.partition(b"\r\n\r\n")
        if not separator:
            return answers, False
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            return answers, False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:
            rest = after
            continue
        if "content-length" in headers:
            size = int(headers["content-length"])
            if len(after) < size and not closed:
                return answers, False
            answers.append(Answer(status, headers, after[:size]))
            rest = after[size:]
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            payload, position, ended = b"", 0, False
            while (line_end := after.find(b"\r\n", position)) >= 0:
                size = int(after[position:line_end].split(b";")[0] or b"0", 16)
                if size == 0:
                    position, ended = line_end + 4, True
                    break
                payload += after[line_end + 2 : line_end + 2 + size]
                position = line_end + 4 + size
            if not ended and not closed:
                return answers, False
            answers.append(Answer(status, headers, payload))
            rest = after[position:] if ended else b""
        else:
            if not closed:
                return answers, False
            answers.append(Answer(status, headers, after))
            rest = b""
    return answers, True


def run(case: Case, where: tuple[str, int]) -> Result:
    exchange = case.payload
    assert isinstance(exchange, clients.Exchange)
    value = canary()
    parts = [part.replace(clients.CANARY, value.encode()) for part in exchange.parts]
    started = time.monotonic()
    deadline = started + (exchange.within + 2.0 if exchange.within else DEADLINE)
    received = b""
    closed = False
    with socket.create_connection(where, timeout=DEADLINE) as connection:
        for index, part in enumerate(parts):
            if index and exchange.pause:
                time.sleep(exchange.pause)
            try:
                connection.sendall(part)
            except OSError:  # the sidecar closed already (a refusal mid-send)
                break
        if exchange.hang_up:
            return Result(b"", [], True, 0.0, time.monotonic() - started, value)
        quiet_since = time.monotonic()
        answered_at: float | None = None
        while True:
            now = time.monotonic()
            answers, whole = parse_answers(received, False)
            done = len(answers) >= exchange.answers and whole
            if done and answered_at is None:
                answered_at = now
            if done and not exchange.closes and now - quiet_since >= QUIET:
                break
            if now >= deadline:
                break
            connection.settimeout(max(0.01, min(QUIET, deadline - now)))
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
            quiet_since = time.monotonic()
    ended = time.monotonic()
    answers, _ = parse_answers(received, closed)
    if answers and answered_at is None:  # complete only once the close ended its body
        answered_at = ended
    answered = (answered_at if answers else ended) - started
    return Result(received, answers, closed, answered, ended - started, value)


@dataclasses.dataclass
class Run:
    results: dict[str, Result]
    state: standin.StandInState
    sidecar: Process
    secrets: set[str]  # the provider keys and the admin token the sidecar holds
    spool: Path  # the audit spool
    log: str | None = None

    def stop(self) -> str:
        if self.log is None:
            self.log = self.sidecar.stop()
        return self.log


def configure(config: dict[str, Any], admin_token: Path) -> None:
    config["listen"] = {
        "header_timeout_seconds": clients.HEADER_TIMEOUT,
        "keepalive_timeout_seconds": clients.KEEPALIVE_TIMEOUT,
        "body_timeout_seconds": clients.BODY_TIMEOUT,
        "drain_seconds": 0,  # the run is over when it stops: no drain to wait out
    }
    config["limits"] = {
        "max_body_bytes": clients.MAX_BODY,
        "memory_budget_bytes": 8 * 1024 * 1024,
    }
    config["logging"] = {"access_log": True}
    config["admin"] = {"port": 0, "token_file": str(admin_token)}
    config["audit"] = {"spool_directory": str(admin_token.parent / "spool"), "durability": "async"}


@pytest.fixture(scope="module")
def corpus_run(
    tmp_path_factory: pytest.TempPathFactory, server_cert: trustme.LeafCert, ca_file: Path
) -> Iterator[Run]:
    workdir = tmp_path_factory.mktemp("hostile-clients")
    loop = LoopThread()
    state = standin.StandInState()
    port = loop.serve(standin.create_app(state), ssl_context=server_context(server_cert))
    token = workdir / "admin-token"
    token.write_text(secrets.token_urlsafe(24))
    sidecar = sidecar_process(
        workdir, (port, state), ca_file, lambda config: configure(config, token)
    )
    try:
        where = address(sidecar)
        # The slow cases first, so their waits overlap with everything else.
        ordered = sorted(clients.CASES, key=lambda c: not c.payload.within)  # type: ignore[attr-defined]
        with ThreadPoolExecutor(max_workers=8) as pool:
            results = dict(
                zip(
                    (c.id for c in ordered),
                    pool.map(lambda c: run(c, where), ordered),
                    strict=True,
                )
            )
        held = set(state.accepted_keys) | {token.read_text()}
        yield Run(results, state, sidecar, held, workdir / "spool")
    finally:
        if sidecar.process.poll() is None:
            sidecar.stop()
        loop.close()


def forwarded_by_case(state: standin.StandInState) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for received in state.received:
        for tag in set(CASE_TAG.findall(json.dumps(received.body, ensure_ascii=False))):
            counts[tag] += 1
    return counts


def test_the_corpus_has_at_least_150_cases_in_every_category() -> None:
    categories = collections.Counter(c.category for c in clients.CASES)
    assert len(clients.CASES) >= 150
    assert set(categories) == {
        "request smuggling",
        "header injection",
        "oversized request",
        "slow request",
        "malformed HTTP",
        "unicode",
        "path and query",
        "credential canary",
    }


@pytest.mark.parametrize("case", clients.CASES, ids=lambda c: c.id)
def test_case(case: Case, corpus_run: Run) -> None:
    exchange = case.payload
    assert isinstance(exchange, clients.Exchange)
    result = corpus_run.results[case.id]
    text = result.raw.decode("latin-1")
    statuses = [answer.status for answer in result.answers]
    if exchange.answers:
        assert statuses, f"no answer ({case.expected}); got {result.raw[:200]!r}"
        assert statuses[0] in exchange.status, f"{case.expected}; got {statuses}"
        assert len(statuses) == exchange.answers, f"{case.expected}; got answers {statuses}"
    else:
        assert statuses == [] or statuses[0] in exchange.status, statuses
    if exchange.code is not None:
        error = json.loads(result.answers[0].body)["error"]
        assert error["code"] == exchange.code, error
    for answer in result.answers:
        if answer.status >= 400:  # every refusal is the API's JSON error shape
            assert answer.headers.get("content-type", "").startswith("application/json")
            assert "error" in json.loads(answer.body), answer.body[:200]
        assert "server" not in answer.headers
    if exchange.within is not None:
        assert result.answered <= exchange.within, f"answered after {result.answered:.1f} s"
    if exchange.closes:
        assert result.closed, f"the sidecar kept the connection open ({case.expected})"
        assert result.seconds <= exchange.within, f"closed after {result.seconds:.1f} s"
    seen = forwarded_by_case(corpus_run.state)[case.id]
    assert seen == exchange.forwarded, f"{seen} request(s) reached the provider ({case.expected})"
    # Nothing the client sent that is secret comes back, nor anything the sidecar holds.
    assert result.canary not in text, "the canary was echoed"
    for held in corpus_run.secrets:
        assert held not in text
    match = KEY_SHAPES.search(text)
    assert match is None, f"key-shaped text in an answer: {match.group(0)[:8]}..."
    assert "Traceback" not in text and "aiohttp" not in text.lower()


def test_the_provider_saw_only_what_the_corpus_meant_to_reach_it(corpus_run: Run) -> None:
    canaries = {result.canary for result in corpus_run.results.values()}
    meant = {c.id: c.payload.forwarded for c in clients.CASES}  # type: ignore[attr-defined]
    counts = forwarded_by_case(corpus_run.state)
    assert sum(counts.values()) == len(corpus_run.state.received), "a request of no case"
    assert {tag for tag in counts if not meant.get(tag)} == set(), "smuggled or refused cases"
    assert counts == collections.Counter({k: v for k, v in meant.items() if v})
    for received in corpus_run.state.received:
        assert received.path in clients.UPSTREAM_PATHS, received.path
        assert received.key in corpus_run.state.accepted_keys, "not the sidecar's key"
        for name in NEVER_UPSTREAM:
            assert name not in received.headers, name
        seen = json.dumps([received.path, received.headers, received.body], ensure_ascii=False)
        for value in canaries:
            assert value not in seen, "a client credential reached the provider"
        for name, value in received.headers.items():
            assert "\r" not in value and "\n" not in value and "\x00" not in value, name


def test_the_sidecar_log_and_audit_trail_hold_no_secret_and_no_traceback(
    corpus_run: Run,
) -> None:
    log = corpus_run.stop()
    assert "malformed request refused" in log  # the log is the sidecar's, and it was read
    for result in corpus_run.results.values():
        assert result.canary not in log, "a canary reached the log"
    for held in corpus_run.secrets:
        assert held not in log and held[-8:] not in log
    match = KEY_SHAPES.search(log)
    assert match is None, f"key-shaped text in the log: {match.group(0)[:8]}..."
    assert "Traceback" not in log and "unexpected error" not in log
    # The audit trail: every event the run left, sealed or not.
    spool = corpus_run.spool.rglob("*")
    trail = "".join(p.read_bytes().decode("latin-1") for p in spool if p.is_file())
    assert "llm.chat.completions" in trail  # the trail is readable here, and was written
    for result in corpus_run.results.values():
        assert result.canary not in trail, "a canary reached the audit trail"
    for held in corpus_run.secrets:
        assert held not in trail
    # The clients that hung up mid-body are recorded as such (499), not as a fault (500).
    assert log.count("POST /v1/chat/completions 499") >= 2
    assert "POST /v1/chat/completions 500" not in log
