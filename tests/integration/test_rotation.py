"""Credential rotation under load: kubelet ..data swaps, plain files, and bad files."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Stack, fake_key, wait_for

CLIENTS = 8
SWAPS = 20


def test_twenty_kubelet_swaps_under_eight_clients_fail_nothing(stack: Stack) -> None:
    stop = threading.Event()
    failures: list[BaseException] = []
    done = [0] * CLIENTS

    def client_loop(index: int) -> None:
        client = stack.openai()
        while not stop.is_set():
            try:
                if index % 2:
                    reply = client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": f"c{index}"}]
                    )
                    assert reply.choices[0].message.content == f"echo: c{index}"
                else:
                    chunks = client.chat.completions.create(
                        model="gpt-4o-mini",
                        messages=[{"role": "user", "content": "s"}],
                        stream=True,
                    )
                    assert (
                        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                        == "echo: s"
                    )
                done[index] += 1
            except BaseException as exc:
                failures.append(exc)

    def reached(key: str, since: int) -> Callable[[], bool]:
        return lambda: any(r.key == key for r in stack.state.received[since:])

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    lags = []
    try:
        wait_for(lambda: all(done))
        for _ in range(SWAPS):
            old, new = stack.keys["openai"], fake_key()
            seen_before = len(stack.state.received)
            stack.publish_keys({**stack.keys, "openai": new}, extra={"openai.previous": old})
            lags.append(wait_for(reached(new, seen_before), timeout=1.0))
        # A malformed file (two tokens: a half-written or wrong file) keeps the old key.
        good = stack.keys["openai"]
        failed_before = stack.metric(
            "sidegate_credential_reloads_total", provider="openai", result="failed"
        )
        stack.volume.publish({**stack.keys, "openai": "not a key\n"})
        wait_for(
            lambda: (
                stack.metric(
                    "sidegate_credential_reloads_total", provider="openai", result="failed"
                )
                == failed_before + 1
            )
        )
        seen_before = len(stack.state.received)
        wait_for(lambda: len(stack.state.received) > seen_before + CLIENTS)
        assert {r.key for r in stack.state.received[seen_before:]} == {good}
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert failures == [], failures[:3]
    assert sum(done) > SWAPS * CLIENTS
    assert max(lags) < 1.0
    assert "credential rejected" in stack.log.getvalue()
    assert str(stack.volume.root / "openai") in stack.log.getvalue()  # the file is named


def test_plain_files_rewritten_and_replaced(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    stack = make_stack(lambda raw: raw.update(credentials={"directory": str(plain)}))
    for name, key in stack.keys.items():
        (plain / name).write_text(key)
    client = stack.openai()

    def current_key() -> str | None:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}]
        )
        return stack.state.received[-1].key

    wait_for(lambda: current_key() == stack.keys["openai"])

    rewritten = fake_key()
    stack.state.accepted_keys.add(rewritten)
    stack.all_keys.add(rewritten)
    (plain / "openai").write_text(rewritten + "\n")  # in place: CLOSE_WRITE
    wait_for(lambda: current_key() == rewritten, timeout=1.0)

    renamed = fake_key()
    stack.state.accepted_keys.add(renamed)
    stack.all_keys.add(renamed)
    (plain / ".openai.tmp").write_text(renamed)
    os.replace(plain / ".openai.tmp", plain / "openai")  # by rename: MOVED_TO
    wait_for(lambda: current_key() == renamed, timeout=1.0)

    (plain / "openai").write_bytes(b"\xff\xfe binary")  # malformed: keeps the last good key
    time.sleep(0.1)
    assert current_key() == renamed
    (plain / "openai").unlink()  # removed: keeps the last good key too
    time.sleep(0.1)
    assert current_key() == renamed
