"""Policy decision latency, bundle reload time, and the event-loop stall during a reload.

    uv run python benchmarks/policy.py

Policy sets of 1, 100 and 10,000 policies, ten per namespace (each with a service-account
subject, an allow and a deny rule of several globs, limits and tenant overrides), and a
pathological set where 1,000 policies all apply to the one caller.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from sidegate.policy import bundle, caching, models, rules
from sidegate.sidecar import policies
from sidegate.sidecar.metrics import Metrics


def make_policy(index: int, namespace: str, account: str) -> models.RBACPolicy:
    return models.RBACPolicy.model_validate(
        {
            "apiVersion": "sidegate.io/v1alpha1",
            "kind": "RBACPolicy",
            "metadata": {"name": f"policy-{index}", "namespace": namespace},
            "spec": {
                "subjects": [{"kind": "ServiceAccount", "name": account}],
                "rules": [
                    {
                        "effect": "Allow",
                        "models": ["gpt-4o*", "claude-*", f"custom-{index}-*", "text-embedding-*"],
                    },
                    {
                        "effect": "Deny",
                        "models": ["*-preview", f"gpt-4o-{index}"],
                        "actions": ["chat", "messages"],
                        "tenants": [f"tenant-{index % 7}"],
                    },
                ],
                "rateLimits": {
                    "requestsPerMinute": 600 + index,
                    "tokensPerMinute": 100_000,
                    "tenantOverrides": [{"tenant": "tenant-1", "requestsPerMinute": 60}],
                },
            },
        }
    )


def spread(count: int) -> list[models.RBACPolicy]:
    return [make_policy(i, f"ns-{i // 10}", f"sa-{i % 10}") for i in range(count)]


def per_call(function, repeat: int) -> float:  # type: ignore[no-untyped-def]
    """Median of 5 runs of ``repeat`` calls, in microseconds per call."""
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(repeat):
            function()
        samples.append((time.perf_counter() - started) / repeat * 1e6)
    return statistics.median(samples)


def decisions() -> None:
    print("| policies | caller's policies | uncached decision (µs) | cached decision (µs) |")
    print("| --- | --- | --- | --- |")
    cases = [
        (spread(1), "ns-0", "sa-0"),
        (spread(100), "ns-5", "sa-3"),
        (spread(10_000), "ns-500", "sa-3"),
    ]
    cases.append(([make_policy(i, "ns-0", "sa-0") for i in range(1000)], "ns-0", "sa-0"))
    for found, namespace, account in cases:
        index = rules.PolicyIndex(bundle.to_bundle(found))
        caller = rules.Caller(namespace, account, "tenant-1")
        mine = len(index.applicable(caller))
        uncached = per_call(
            lambda i=index, c=caller: i.decide(c, "gpt-4o-mini", "chat"),
            2000 if mine < 100 else 200,
        )
        cache = caching.DecisionCache(index, ttl=60, clock=time.monotonic)
        cache.decide(caller, "gpt-4o-mini", "chat")
        cached = per_call(lambda d=cache, c=caller: d.decide(c, "gpt-4o-mini", "chat"), 100_000)
        print(f"| {len(found):,} | {mine} | {uncached:.1f} | {cached:.2f} |")


async def reload_and_stall(count: int) -> None:
    data = bundle.dumps(bundle.to_bundle(spread(count)))
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "bundle.json"
        path.write_bytes(data)
        load_times = []
        for _ in range(5):
            started = time.perf_counter()
            policies.read_bundle_file(path)
            load_times.append((time.perf_counter() - started) * 1000)

        holder = policies.PolicyHolder(
            lambda: policies.read_bundle_file(path),
            watch_directory=path.parent,
            cache_ttl=30,
            metrics=Metrics(),
        )
        await holder.reload()
        # A ticker that wants to run every millisecond: its worst lateness while reloads run
        # in the worker thread is the longest a request could have been held up.
        stop = asyncio.Event()
        lateness: list[float] = []

        async def ticker() -> None:
            while not stop.is_set():
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                lateness.append((time.perf_counter() - before - 0.001) * 1000)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.2)
        baseline = max(lateness)
        lateness.clear()
        reloads = []
        for _ in range(5):
            started = time.perf_counter()
            await holder.reload()
            reloads.append((time.perf_counter() - started) * 1000)
        stop.set()
        await task
    print(f"\n{count:,} policies, bundle {len(data) / 1e6:.1f} MB:")
    print(
        f"- read + verify hash + parse + compile index (`read_bundle_file`): median {statistics.median(load_times):.0f} ms"
    )
    print(
        f"- whole reload through the holder (worker thread): median {statistics.median(reloads):.0f} ms"
    )
    print(
        f"- worst event-loop lateness during 5 reloads: {max(lateness):.1f} ms (idle baseline {baseline:.1f} ms)"
    )


if __name__ == "__main__":
    decisions()
    asyncio.run(reload_and_stall(10_000))
