"""kill -9 under load, then restart: every event that reached the disk reaches S3, and the
chain verifies across the restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

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


def test_kill_9_under_load_then_restart(
    tmp_path: Path, provider: tuple[int, standin.StandInState], ca_file: Path, s3: S3
) -> None:
    port, state = provider
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("openai", "anthropic", "azure", "compat"):
        key = fake_key()
        (credentials / name).write_text(key)
        state.accepted_keys.add(key)
    config: dict[str, Any] = base_config(port, ca_file, credentials)
    spool = tmp_path / "spool"
    config["identity"] = {"namespace": "default", "service_account": "default", "pod": "crashy-0"}
    config["audit"] = {
        "spool_directory": str(spool),
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
    deadline = time.monotonic() + 20
    while not s3.keys() and time.monotonic() < deadline:  # some segments shipped already
        time.sleep(0.05)
    time.sleep(0.5)
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
