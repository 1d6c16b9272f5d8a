"""Global rate limits: two sidecar processes share one real redis-server."""

from __future__ import annotations

import json
import math
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidegate import standin
from tests.conftest import base_config, fake_key, wait_for
from tests.helpers.http import call, chat_body
from tests.helpers.processes import Process, RedisServer, start_redis, start_sidecar

CHAT = "/v1/chat/completions"
LIMIT = 30  # requests per minute, shared by both sidecars


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis(password=secrets.token_hex(12))
    yield server
    server.kill()


def config_for(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    redis_server: RedisServer,
    fail_mode: str,
) -> dict[str, Any]:
    port, state = provider
    credentials = tmp_path / "credentials"
    if not credentials.exists():
        credentials.mkdir()
        for name in ("openai", "anthropic", "azure", "compat"):
            key = fake_key()
            (credentials / name).write_text(key)
            state.accepted_keys.add(key)
        redis_dir = tmp_path / "redis"
        redis_dir.mkdir()
        (redis_dir / "url").write_text(redis_server.url)
        (redis_dir / "password").write_text(redis_server.password or "")
        policies = tmp_path / "policies"
        policies.mkdir()
        (policies / "limited.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "sidegate.io/v1alpha1",
                    "kind": "RBACPolicy",
                    "metadata": {"name": "limited", "namespace": "default"},
                    "spec": {
                        "subjects": [{"kind": "Namespace", "name": "default"}],
                        "rules": [{"effect": "Allow", "models": ["*"]}],
                        "rateLimits": {"requestsPerMinute": LIMIT},
                    },
                }
            )
        )
    raw = base_config(port, ca_file, credentials, tmp_path / "policies")
    raw["rate_limits"] = {
        "backend": "redis",
        "fail_mode": fail_mode,
        "redis": {
            "url_file": str(tmp_path / "redis" / "url"),
            "password_file": str(tmp_path / "redis" / "password"),
        },
    }
    return raw


def drive(sidecars: list[Process], seconds: float, on_tick: Any = None) -> list[tuple[float, int]]:
    """4 client threads per sidecar, each sending requests back to back."""
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    started = time.monotonic()

    def client(origin: str) -> None:
        while (now := time.monotonic()) - started < seconds:
            status = call(origin, CHAT, chat_body())[0]
            with lock:
                results.append((now - started, status))

    threads = [
        threading.Thread(target=client, args=(s.origin,)) for s in sidecars for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    if on_tick:
        on_tick()
    for thread in threads:
        thread.join()
    return results


def test_two_sidecars_share_one_global_limit(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    redis_server: RedisServer,
) -> None:
    config = config_for(tmp_path, provider, ca_file, redis_server, "closed")
    sidecars = [start_sidecar(config, tmp_path, f"sidecar-{i}") for i in range(2)]
    try:
        started = time.monotonic()
        results = drive(sidecars, seconds=3.0)
        elapsed = time.monotonic() - started
    finally:
        logs = [s.stop() for s in sidecars]
    counts = Counter(status for _, status in results)
    assert set(counts) <= {200, 429}, counts
    # The documented bound: a full bucket (one minute's worth) plus what refills meanwhile.
    assert LIMIT <= counts[200] <= LIMIT + math.ceil(LIMIT * elapsed / 60), counts
    assert counts[429] > 10 * counts[200]  # the load really was far above the limit
    with redis_server.client() as client:
        assert client.keys("sidegate:r:default/default")  # no tenant in the key
    for log in logs:
        assert redis_server.password not in log  # type: ignore[operator]


@pytest.mark.parametrize(("fail_mode", "expected"), [("open", 200), ("closed", 503)])
def test_redis_going_down_applies_the_fail_mode(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    redis_server: RedisServer,
    fail_mode: str,
    expected: int,
) -> None:
    config = config_for(tmp_path, provider, ca_file, redis_server, fail_mode)
    sidecar = start_sidecar(config, tmp_path)
    killed_at: list[float] = []
    started = time.monotonic()

    def kill_midway() -> None:
        time.sleep(1.0)
        killed_at.append(time.monotonic() - started)
        redis_server.kill()

    try:
        results = drive([sidecar], seconds=2.5, on_tick=kill_midway)
        _, _, metrics = call(sidecar.origin, "/metrics", method="GET")
    finally:
        log = sidecar.stop()
    # Requests started around the kill may see either; judge those clearly before and after.
    before = {status for at, status in results if at < killed_at[0] - 0.3}
    after = {status for at, status in results if at > killed_at[0] + 0.3}
    assert before <= {200, 429} and 200 in before
    assert after == {expected}, Counter(s for _, s in results)
    assert f'sidegate_rate_limiter_errors_total{{mode="{fail_mode}"}}' in metrics
    assert f"rate-limit backend unreachable, failing {fail_mode}" in log


def test_redis_settings_reload_from_their_files(
    tmp_path: Path,
    provider: tuple[int, standin.StandInState],
    ca_file: Path,
    redis_server: RedisServer,
) -> None:
    config = config_for(tmp_path, provider, ca_file, redis_server, "closed")
    sidecar = start_sidecar(config, tmp_path)
    second = start_redis(password=secrets.token_hex(12))
    try:
        assert call(sidecar.origin, CHAT, chat_body())[0] == 200
        (tmp_path / "redis" / "password").write_text(second.password or "")
        (tmp_path / "redis" / "url").write_text(second.url)
        with second.client() as client:
            wait_for(
                lambda: (
                    call(sidecar.origin, CHAT, chat_body())[0] == 200
                    and bool(client.keys("sidegate:*"))
                )
            )
    finally:
        log = sidecar.stop()
        second.kill()
    assert "redis connection settings loaded" in log
    assert (second.password or "") not in log
