"""The audit trail end to end: requests and admin writes become events, the events reach
moto's S3 and verify, tampering is caught, an S3 outage loses nothing, a full or unwritable
spool applies its fail mode."""

from __future__ import annotations

import gzip
import json
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidegate.audit import events, verifying
from tests.conftest import Stack, assert_no_secrets, fake_key, wait_for
from tests.helpers.http import call, chat_body
from tests.helpers.s3 import BUCKET, S3

CHAT = "/v1/chat/completions"


def with_audit(tmp_path: Path, s3: S3 | None, **audit: Any) -> Callable[[dict[str, Any]], None]:
    def configure(raw: dict[str, Any]) -> None:
        raw["identity"] = {"namespace": "team-a", "service_account": "chatbot", "pod": "chatbot-0"}
        policy_dir = Path(raw["policy"]["directory"])
        (policy_dir / "allow-all.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "sidegate.io/v1alpha1",
                    "kind": "RBACPolicy",
                    "metadata": {"name": "chat", "namespace": "team-a"},
                    "spec": {
                        "subjects": [{"kind": "ServiceAccount", "name": "chatbot"}],
                        "rules": [{"effect": "Allow", "models": ["gpt-*"]}],
                        "rateLimits": {
                            "tenantOverrides": [{"tenant": "tiny", "requestsPerMinute": 1}]
                        },
                    },
                }
            )
        )
        raw["audit"] = {
            "spool_directory": str(tmp_path / "spool"),
            "segment_max_age_seconds": 0.3,
            "flush_interval_ms": 2,
            **audit,
        }
        if s3 is not None:
            raw["audit"]["s3"] = {
                "bucket": BUCKET,
                "prefix": "trail",
                "region": "us-east-1",
                "endpoint_url": s3.endpoint,
                "base_backoff_seconds": 0.05,
                "max_backoff_seconds": 0.5,
                "object_lock": {"mode": "GOVERNANCE", "retain_days": 1},
            }

    return configure


def request_events(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in found if e["action"].startswith("llm.")]


def test_every_request_and_admin_write_becomes_exactly_one_event_in_s3(
    make_stack: Callable[..., Stack], tmp_path: Path, s3: S3
) -> None:
    stack = make_stack(with_audit(tmp_path, s3), admin=True)
    c = stack.openai()
    sent: dict[str, tuple[str, int]] = {}

    def send(
        label: str, body: bytes, headers: dict[str, str] | None = None, path: str = CHAT
    ) -> None:
        request_id = f"{label}-{len(sent)}"
        status = call(stack.origin, path, body, {"x-request-id": request_id, **(headers or {})})[0]
        sent[request_id] = (label, status)

    send("allowed", chat_body())
    send("allowed-stream", chat_body(stream=True))
    send("denied", chat_body(model="claude-3"))
    send("limited", chat_body(), {"x-sidegate-tenant": "tiny"})
    send("limited", chat_body(), {"x-sidegate-tenant": "tiny"})
    send("bad-input", chat_body(temprature=1))
    stack.state.accepted_keys.clear()
    send("upstream-refused", chat_body())
    c.models.list()
    # Admin writes, one good and one refused; and a credential rotation (reload events).
    admin_headers = {"authorization": f"Bearer {stack.admin_token}"}
    policy = json.loads((stack.policy_dir / "allow-all.yaml").read_text())
    policy["metadata"]["name"] = "extra"
    assert (
        call(
            stack.admin_origin,
            "/admin/v1/policies/team-a/extra",
            json.dumps(policy).encode(),
            admin_headers,
            method="PUT",
        )[0]
        == 201
    )
    assert (
        call(
            stack.admin_origin, "/admin/v1/policies/team-a/bad", b"{}", admin_headers, method="PUT"
        )[0]
        == 422
    )
    stack.publish_keys({**stack.keys, "openai": fake_key()})
    wait_for(
        lambda: (
            stack.metric("sidegate_credential_reloads_total", provider="openai", result="ok") >= 2
        )
    )

    stack.loop.close()  # SIGTERM's path: flush, seal, upload within the grace period
    found = s3.events()
    statuses = {label: status for label, status in sent.values()}
    assert statuses == {
        "allowed": 200,
        "allowed-stream": 200,
        "denied": 403,
        "limited": 429,
        "bad-input": 400,
        "upstream-refused": 401,
    }
    by_request = Counter(e["request_id"] for e in request_events(found))
    for request_id in sent:
        assert by_request[request_id] == 1, request_id  # exactly one event each
    outcomes = {
        e["request_id"]: e["outcome"] for e in request_events(found) if e["request_id"] in sent
    }
    results = Counter((sent[rid][0], o["result"]) for rid, o in outcomes.items())
    assert results[("allowed", "allowed")] == 1 and results[("denied", "denied")] == 1
    assert results[("limited", "rate_limited")] == 1 and results[("limited", "allowed")] == 1
    assert results[("bad-input", "error")] == 1 and results[("upstream-refused", "error")] == 1
    denied = next(o for rid, o in outcomes.items() if sent[rid][0] == "denied")
    assert denied == {
        "result": "denied",
        "status": 403,
        "reason": "no_matching_allow",
        "policy": None,
    }
    actions = Counter(e["action"] for e in found)
    assert actions["llm.models.list"] == 1
    assert actions["admin.policy.put"] == 2
    assert actions["policy.reload"] >= 2 and actions["credential.reload"] >= 5
    assert actions["audit.restart"] == 1
    streamed = next(e for e in found if e.get("request_id", "").startswith("allowed-stream"))
    assert streamed["usage"]["output_tokens"] == 2 and streamed["actor"]["pod"] == "chatbot-0"
    for event in found:
        events.AuditEvent.model_validate(event)  # the schema holds for every line written
    stored = s3.keys()
    keys = [k for k in stored if k.endswith(".jsonl.gz")]
    assert all(k.startswith("trail/") and "/team-a/chatbot-0/" in k for k in stored)
    names = [k.rsplit("/", 1)[-1] for k in stored]
    assert sum(n.startswith("key-") for n in names) == 1  # this run's public key, exported
    (key_name,) = [n for n in names if n.startswith("key-")]
    started = next(
        json.loads(line)
        for line in stack.log.getvalue().splitlines()
        if "audit signing key for this run" in line
    )
    assert started["key_id"] == key_name.removeprefix("key-").removesuffix(".pem")
    assert started["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert sum(n.startswith("digest-") for n in names) >= len(keys)  # a digest per segment
    head = s3.client().head_object(Bucket=BUCKET, Key=keys[0], ChecksumMode="ENABLED")
    assert head["ObjectLockMode"] == "GOVERNANCE" and head.get("ChecksumSHA256")
    assert_no_secrets(json.dumps(found), stack.all_keys)
    assert not list((tmp_path / "spool" / "sealed").iterdir())  # deleted once S3 had them
    import asyncio

    reports = asyncio.run(
        verifying.s3_trails(BUCKET, "trail", endpoint_url=s3.endpoint, region="us-east-1")
    )
    assert [r.ok for r in reports] == [True] and reports[0].events == len(found)


def test_one_flipped_byte_in_s3_fails_verify_at_that_line_and_version(
    make_stack: Callable[..., Stack], tmp_path: Path, s3: S3
) -> None:
    stack = make_stack(with_audit(tmp_path, s3))
    for _ in range(5):
        call(stack.origin, CHAT, chat_body())
    stack.loop.close()
    stored = s3.keys()
    key = next(k for k in stored if k.endswith(".jsonl.gz"))
    client = s3.client()
    lines = gzip.decompress(client.get_object(Bucket=BUCKET, Key=key)["Body"].read()).splitlines()
    target = max(i for i, line in enumerate(lines) if b'"status":200' in line)
    lines[target] = lines[target].replace(b'"status":200', b'"status":201', 1)
    client.put_object(Bucket=BUCKET, Key=key, Body=gzip.compress(b"\n".join(lines) + b"\n"))
    import asyncio

    (report,) = asyncio.run(
        verifying.s3_trails(BUCKET, "trail", endpoint_url=s3.endpoint, region="us-east-1")
    )
    assert not report.ok
    where = f"s3://{BUCKET}/{key}"
    assert sorted((p.check, p.where, p.line) for p in report.problems) == [
        ("event-hash", where, target + 1),
        ("segment-hash", where, 0),
        ("versions", where, 0),  # overwritten: the first version is still there
    ], [str(p) for p in report.problems]


def test_an_s3_outage_under_load_loses_nothing(
    make_stack: Callable[..., Stack], tmp_path: Path, s3: S3
) -> None:
    bound = 2 * 1024 * 1024
    stack = make_stack(with_audit(tmp_path, s3, max_spool_bytes=bound))
    sent: list[str] = []
    stop = threading.Event()
    spool_sizes: list[float] = []

    def load() -> None:
        while not stop.is_set():
            request_id = f"load-{len(sent)}"
            if call(stack.origin, CHAT, chat_body(), {"x-request-id": request_id})[0] == 200:
                sent.append(request_id)
            spool_sizes.append(stack.metric("sidegate_audit_spool_bytes"))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(s3.keys()) >= 2)
        s3.stop()  # S3 goes away; segments pile up in the spool
        outage_started = len(sent)
        wait_for(
            lambda: stack.metric("sidegate_audit_uploads_total", result="failed") >= 3, timeout=15
        )
        wait_for(lambda: len(sent) > outage_started + 50)
        assert stack.metric("sidegate_audit_pending_segments") >= 2
        s3.start()  # same port, same state: it comes back
        wait_for(lambda: stack.metric("sidegate_audit_pending_segments") == 0, timeout=20)
    finally:
        stop.set()
        thread.join()
    stack.loop.close()
    found = request_events(s3.events())
    ids = Counter(e["id"] for e in found)
    assert max(ids.values()) == 1  # no event twice
    arrived = {e["request_id"] for e in found}
    assert set(sent) <= arrived, f"{len(set(sent) - arrived)} events lost"
    assert max(spool_sizes) <= bound


@pytest.mark.parametrize("fail_mode", ["closed", "open"])
def test_an_unwritable_spool_applies_the_fail_mode(
    make_stack: Callable[..., Stack], tmp_path: Path, fail_mode: str
) -> None:
    stack = make_stack(with_audit(tmp_path, None, fail_mode=fail_mode, segment_max_age_seconds=0.1))
    spool = tmp_path / "spool"
    assert call(stack.origin, CHAT, chat_body())[0] == 200
    # Root ignores permission bits, so "unwritable" is done for real: the spool directory
    # becomes a plain file, and every open, rename and fsync under it fails.
    moved = tmp_path / "spool-moved"
    spool.rename(moved)
    spool.write_text("not a directory")
    wait_for(lambda: stack.metric("sidegate_audit_spool_healthy") == 0)
    status, _, answer = call(stack.origin, CHAT, chat_body())
    if fail_mode == "closed":
        assert status == 503 and answer["error"]["code"] == "audit_unavailable"
    else:
        assert status == 200
        wait_for(lambda: stack.metric("sidegate_audit_events_total", result="dropped") >= 1)
    spool.unlink()
    moved.rename(spool)
    wait_for(lambda: stack.metric("sidegate_audit_spool_healthy") == 1)
    assert call(stack.origin, CHAT, chat_body())[0] == 200
    expected = (
        "refusing LLM requests (fail-closed)"
        if fail_mode == "closed"
        else "dropping events (fail-open)"
    )
    assert expected in stack.log.getvalue()


def test_a_full_spool_applies_fail_closed(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    stack = make_stack(with_audit(tmp_path, None, max_spool_bytes=64 * 1024))
    statuses = Counter(call(stack.origin, CHAT, chat_body())[0] for _ in range(200))
    assert statuses[200] > 0 and statuses[503] > 0
    assert stack.metric("sidegate_audit_spool_bytes") <= 64 * 1024


def test_a_deleted_segment_in_s3_shows_as_a_delete_marker_and_a_hole(
    make_stack: Callable[..., Stack], tmp_path: Path, s3: S3
) -> None:
    stack = make_stack(with_audit(tmp_path, s3))
    for _ in range(5):
        call(stack.origin, CHAT, chat_body())
    stack.loop.close()
    key = next(k for k in s3.keys() if k.endswith(".jsonl.gz"))  # noqa: SIM118
    s3.client().delete_object(Bucket=BUCKET, Key=key)  # a delete marker: the version stays
    import asyncio

    (report,) = asyncio.run(
        verifying.s3_trails(BUCKET, "trail", endpoint_url=s3.endpoint, region="us-east-1")
    )
    where = f"s3://{BUCKET}/{key}"
    assert ("versions", where) in {(p.check, p.where) for p in report.problems}
    assert "coverage" in report.checks(), [str(p) for p in report.problems]
