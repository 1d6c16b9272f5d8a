"""Events per second into the audit spool, with group commit and fsync.

    uv run python benchmarks/audit.py [--events 200000]

Emits events as a busy sidecar would (request-sized events, the event loop yielding every
100), and measures from the first emit until the last is fsync'd. Every event is chained,
written and fsync'd; the spool is on the machine's disk (TMPDIR).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from sidegate.audit import spool
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--flush-ms", type=float, default=5.0)
    args = parser.parse_args()
    rates = [asyncio.run(run(args.events, args.flush_ms))[0] for _ in range(3)]
    print(
        f"{args.events:,} events, flush interval {args.flush_ms} ms: {statistics.median(rates):,.0f} events/s (median of 3: {', '.join(f'{r:,.0f}' for r in rates)})"
    )


if __name__ == "__main__":
    main()
