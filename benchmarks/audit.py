"""Events per second into the audit spool, with group commit and fsync; and what
acknowledged durability costs a request.

    uv run python benchmarks/audit.py [--events 200000]
    uv run python benchmarks/audit.py --durability [--seconds 5] [--repeat 2]

Without --durability: emits events as a busy sidecar would (request-sized events, the event
loop yielding every 100), and measures from the first emit until the last is fsync'd.
Every event is chained, numbered, written and fsync'd, segments signed; the spool is on the
machine's disk (TMPDIR).

With --durability: the sidecar process (policy, no limits) with no audit, with audit in
async mode and in acknowledged mode, each under wrk at 1, 4 and 32 connections (the
harness of overhead.py: sidecar on core 0, upstream and wrk on core 1). Prints p50 and
req/s, and p50 added over the sidecar without audit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from sidegate.audit import signing, spool
from sidegate.audit.metrics import AuditMetrics


def request_event(index: int) -> dict[str, object]:
    return {
        "actor": {
            "kind": "workload",
            "namespace": "team-a",
            "service_account": "chatbot",
            "pod": "chatbot-7d9f-abcde",
            "tenant": "acme",
        },
        "action": "llm.chat.completions",
        "resource": {"provider": "openai", "model": "gpt-4o-mini", "route": "chat"},
        "outcome": {
            "result": "allowed",
            "status": 200,
            "reason": "allowed",
            "policy": "team-a/chat-models",
        },
        "request_id": f"{index:032x}",
        "usage": {"input_tokens": 120, "output_tokens": 380},
        "latency_ms": 812.417,
    }


async def run(count: int, flush_ms: float) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as directory:
        metrics = AuditMetrics(CollectorRegistry())
        trail = spool.Spool(
            Path(directory),
            spool.Identity("team-a", "chatbot", "chatbot-0"),
            metrics,
            max_bytes=10 * 1024**3,
            segment_max_bytes=64 * 1024**2,
            segment_max_age=3600,
            flush_interval=flush_ms / 1000,
            fail_open=False,
            signer=signing.Signer(),
            digest_interval=60,
        )
        trail.open()
        writer = asyncio.create_task(trail.run())
        await asyncio.sleep(0.05)
        written = metrics.events.labels("written")
        base = written._value.get()
        started = time.perf_counter()
        for index in range(count):
            trail.emit(request_event(index))
            if index % 100 == 99:
                await asyncio.sleep(0)
                while len(trail._pending) > 20_000:  # noqa: ASYNC110 - a producer outrunning the disk waits
                    await asyncio.sleep(0.001)
        while written._value.get() - base < count:  # noqa: ASYNC110 - polling a counter
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - started
        commits = metrics.commit_seconds._sum.get()
        await trail.close()
        writer.cancel()
        return count / elapsed, commits


CONNECTIONS = (1, 4, 32)


def durability(seconds: int, repeat: int) -> None:
    import overhead  # this directory's harness: the same upstream, wrk script and pinning

    modes = ("no audit", "async", "acknowledged")
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as workdir:
        try:
            upstream_port = overhead.free_port()
            processes.append(
                subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        "1",
                        sys.executable,
                        str(overhead.HERE / "upstream.py"),
                        str(upstream_port),
                    ]
                )
            )
            overhead.wait_listening(upstream_port)
            urls = {}
            for number, mode in enumerate(modes):
                # All three sidecars run at once on core 0 (only one is loaded at a time), and
                # the runs interleave: a machine that is busier now than a minute ago skews
                # every mode alike.
                directory = Path(workdir) / str(number)
                directory.mkdir()
                port = overhead.free_port()
                extra: dict[str, Any] = {}
                if mode != "no audit":
                    extra["audit"] = {
                        "spool_directory": str(directory / "spool"),
                        "max_spool_bytes": 8 * 1024**3,
                        "durability": mode,
                    }
                config = overhead.sidecar_config(directory, upstream_port, port, extra, False)
                processes.append(
                    subprocess.Popen(
                        [
                            "taskset",
                            "-c",
                            "0",
                            sys.executable,
                            "-m",
                            "sidegate",
                            "sidecar",
                            "--config",
                            str(config),
                        ]
                    )
                )
                overhead.wait_listening(port)
                urls[mode] = f"http://127.0.0.1:{port}/v1/chat/completions"
                overhead.wrk(urls[mode], 8, 2)  # warm-up
            for run in range(repeat):
                for step, connections in enumerate(CONNECTIONS):
                    turn = (run + step) % len(modes)  # each mode goes first in turn
                    for mode in modes[turn:] + modes[:turn]:
                        results.setdefault((mode, connections), []).append(
                            overhead.wrk(urls[mode], connections, seconds)
                        )
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)

    def med(mode: str, connections: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(mode, connections)])

    print("| connections | mode | p50 (ms) | p50 added by audit (ms) | req/s |")
    print("| --- | --- | --- | --- | --- |")
    for connections in CONNECTIONS:
        base = med("no audit", connections, "p50")
        for mode in modes:
            p50 = med(mode, connections, "p50")
            added = "" if mode == "no audit" else f"{p50 - base:+.3f}"
            print(
                f"| {connections} | {mode} | {p50:.3f} | {added} | "
                f"{med(mode, connections, 'rps'):,.0f} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--flush-ms", type=float, default=5.0)
    parser.add_argument("--durability", action="store_true", help="the HTTP table instead")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.durability:
        durability(args.seconds, args.repeat)
        return
    rates = [asyncio.run(run(args.events, args.flush_ms))[0] for _ in range(3)]
    print(
        f"{args.events:,} events, flush interval {args.flush_ms} ms: {statistics.median(rates):,.0f} events/s (median of 3: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
