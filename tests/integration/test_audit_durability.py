"""Acknowledged durability: no response completes before its audit event is on disk.

Against a running sidecar: the answer (a whole body, or a stream's last event) arrives only
once the event is in the spool; concurrent requests share fsyncs; and a request whose event
cannot be written is not answered (a 503, or a stream cut before its last event). A control
case in async mode shows the check can fail.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import Stack
from tests.helpers.http import call, chat_body
from tests.integration.test_audit_export import with_audit

CHAT = "/v1/chat/completions"


def ids_on_disk(spool: Path) -> Counter[str]:
    found: Counter[str] = Counter()
    for segment in spool.rglob("*.jsonl"):
        for line in segment.read_bytes().splitlines():
            request_id = json.loads(line).get("request_id")
            if request_id:
                found[request_id] += 1
    return found


@pytest.mark.parametrize("stream", [False, True])
def test_the_answer_arrives_after_its_event_is_on_disk(
    make_stack: Callable[..., Stack], tmp_path: Path, stream: bool
) -> None:
    # A gathering delay far longer than the request: in acknowledged mode it is not used.
    stack = make_stack(with_audit(tmp_path, None, durability="acknowledged", flush_interval_ms=400))
    for number in range(5):
        request_id = f"ack-{stream}-{number}"
        status, _, body = call(
            stack.origin, CHAT, chat_body(stream=stream), {"x-request-id": request_id}
        )
        assert status == 200 and (not stream or "[DONE]" in body)
        assert ids_on_disk(tmp_path / "spool")[request_id] == 1  # at once, no waiting


def test_control_in_async_mode_the_answer_does_not_wait(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(with_audit(tmp_path, None, durability="async", flush_interval_ms=400))
    call(stack.origin, CHAT, chat_body(), {"x-request-id": "async-0"})
    assert ids_on_disk(tmp_path / "spool")["async-0"] == 0


def test_concurrent_requests_share_fsyncs(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(with_audit(tmp_path, None, durability="acknowledged"))
    before = stack.metric("sidegate_audit_commit_seconds_count")
    statuses: list[int] = []

    def client() -> None:
        for _ in range(8):
            statuses.append(call(stack.origin, CHAT, chat_body())[0])

    threads = [threading.Thread(target=client) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    commits = stack.metric("sidegate_audit_commit_seconds_count") - before
    assert statuses == [200] * 256
    assert commits < 256 / 2, commits  # one fsync served several requests


def read_stream(origin: str, request_id: str) -> tuple[int, bytes]:
    """A streamed chat read to its very end; raises if the chunked body is cut."""
    parts = urlsplit(origin)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request(
            "POST",
            CHAT,
            body=chat_body(stream=True),
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_a_request_whose_event_cannot_be_written_is_not_answered(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    stack = make_stack(
        with_audit(tmp_path, None, durability="acknowledged", max_spool_bytes=64 * 1024)
    )
    stack.state.stream_delay = 0.3
    outcome: list[object] = []

    def slow_stream() -> None:
        try:
            outcome.append(read_stream(stack.origin, "slow-stream"))
        except http.client.IncompleteRead as exc:
            outcome.append(exc)

    streaming = threading.Thread(target=slow_stream)
    streaming.start()
    answered: dict[str, int] = {}
    number = 0
    while 503 not in answered.values():  # fill the spool while the stream runs
        request_id = f"fill-{number}"
        answered[request_id] = call(stack.origin, CHAT, chat_body(), {"x-request-id": request_id})[
            0
        ]
        number += 1
    streaming.join()
    on_disk = ids_on_disk(tmp_path / "spool")
    assert all(on_disk[rid] == 1 for rid, status in answered.items() if status == 200)
    assert all(on_disk[rid] == 0 for rid, status in answered.items() if status == 503)
    assert on_disk["slow-stream"] == 0
    (cut,) = outcome
    assert isinstance(cut, http.client.IncompleteRead), cut  # never a clean end
    assert b"[DONE]" not in cut.partial
