"""kill -9 under load, then restart: every event that reached the disk reaches S3, and the
trail verifies across the restart. In acknowledged mode, every request that got a complete
answer has exactly one event in the exported trail, over twenty crashes."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from sidegate import standin
from sidegate.audit import verifying
from tests.conftest import base_config, fake_key
from tests.helpers.http import call, chat_body
from tests.helpers.processes import start_sidecar
from tests.helpers.s3 import BUCKET, S3


def ids_on_disk(spool: Path) -> set[str]:
    """Ids of the complete lines in the spool: what was written before the kill."""
    found = set()
    for segment in spool.rglob("*.jsonl"):
        for line in segment.read_bytes().split(b"\n"):
            with contextlib.suppress(ValueError, KeyError):  # a torn line: never acknowledged
                found.add(json.loads(line)["id"])
    return found


def crash_config(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path, s3: S3
) -> dict[str, Any]:
    port, state = provider
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("openai", "anthropic", "azure", "compat"):
        key = fake_key()
        (credentials / name).write_text(key)
        state.accepted_keys.add(key)
    config: dict[str, Any] = base_config(port, ca_file, credentials)
    config["identity"] = {"namespace": "default", "service_account": "default", "pod": "crashy-0"}
    config["audit"] = {
        "spool_directory": str(tmp_path / "spool"),
        "segment_max_age_seconds": 0.3,
        "flush_interval_ms": 2,
        "s3": {
            "bucket": BUCKET,
            "prefix": "trail",
            "region": "us-east-1",
            "endpoint_url": s3.endpoint,
            "base_backoff_seconds": 0.05,
        },
    }
    return config


def test_kill_9_under_load_then_restart(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path, s3: S3
) -> None:
    config = crash_config(tmp_path, provider, ca_file, s3)
    spool = tmp_path / "spool"
    sidecar = start_sidecar(config, tmp_path, "crashy")
    stop = threading.Event()
    answered = [0]

    def load() -> None:
        while not stop.is_set():
            try:
                if call(sidecar.origin, "/v1/chat/completions", chat_body())[0] == 200:
                    answered[0] += 1
            except OSError:
                return  # the process is gone

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    # Killed under load: once some segments have shipped and enough requests were answered
    # (a count, not a time: a loaded machine answers fewer per second), mid-traffic.
    deadline = time.monotonic() + 60
    while (not s3.keys() or answered[0] <= 150) and time.monotonic() < deadline:
        time.sleep(0.05)
    sidecar.kill()  # SIGKILL: no flush, no seal, no upload
    stop.set()
    for thread in threads:
        thread.join()
    before = ids_on_disk(spool) | {e["id"] for e in s3.events()}

    restarted = start_sidecar(config, tmp_path, "crashy")  # recovers, seals, ships leftovers
    restarted.stop()  # SIGTERM: flush and upload within the grace period
    after = s3.events()
    after_ids = {e["id"] for e in after}
    print(
        f"\n{answered[0]} requests answered; {len(before)} events on disk or in S3 at the kill; {len(after_ids)} in S3 after the restart"
    )
    assert answered[0] > 100
    assert before and before <= after_ids, (
        f"{len(before - after_ids)} written events never reached S3"
    )
    assert len(after_ids) == len(after)  # none twice
    assert sum(e["action"] == "audit.restart" for e in after) == 2
    (report,) = asyncio.run(
        verifying.s3_trails(BUCKET, "trail", endpoint_url=s3.endpoint, region="us-east-1")
    )
    assert report.ok, [str(p) for p in report.problems]


def complete_answer(origin: str, request_id: str, stream: bool) -> bool:
    """Whether the request got a whole answer: a 200 and its body to the end (a stream's
    [DONE] and chunked terminator). A connection cut anywhere is not an answer."""
    parts = urlsplit(origin)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request(
            "POST",
            "/v1/chat/completions",
            body=chat_body(stream=stream),
            headers={"content-type": "application/json", "x-request-id": request_id},
        )
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()
    return response.status == 200 and (not stream or b"data: [DONE]" in body)


@pytest.mark.slow
def test_acknowledged_mode_no_answer_without_its_event_over_20_kills(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path, s3: S3
) -> None:
    config = crash_config(tmp_path, provider, ca_file, s3)
    config["audit"]["durability"] = "acknowledged"
    answered: set[str] = set()
    lock = threading.Lock()
    for crash in range(20):
        sidecar = start_sidecar(config, tmp_path, "crashy")
        stop = threading.Event()

        def load(
            worker: int,
            origin: str = sidecar.origin,
            crash: int = crash,
            stop: threading.Event = stop,
        ) -> None:
            for number in itertools.count():
                if stop.is_set():
                    return
                request_id = f"c{crash}-w{worker}-{number}"
                if complete_answer(origin, request_id, stream=number % 3 == 0):
                    with lock:
                        answered.add(request_id)
                elif stop.is_set():
                    return

        threads = [threading.Thread(target=load, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        time.sleep(0.4)
        sidecar.kill()  # SIGKILL in the middle of the load: no flush, no seal, no upload
        stop.set()
        for thread in threads:
            thread.join()
    final = start_sidecar(config, tmp_path, "crashy")  # recovers, signs, ships leftovers
    final.stop()
    found = Counter(e.get("request_id") for e in s3.events())
    print(f"\n{len(answered)} complete answers over 20 kills; {sum(found.values())} events")
    assert len(answered) > 200
    missing = [rid for rid in answered if found[rid] == 0]
    assert not missing, f"{len(missing)} answered requests have no event: {missing[:5]}"
    twice = [rid for rid, count in found.items() if rid and count > 1]
    assert not twice, twice[:5]
    (report,) = asyncio.run(
        verifying.s3_trails(BUCKET, "trail", endpoint_url=s3.endpoint, region="us-east-1")
    )
    assert report.ok, [str(p) for p in report.problems]
    assert len(report.keys) == 21  # a key per run, each published and verifying
