"""The memory drill: peak RSS of the sidecar under abuse, against its 256 Mi limit.

    uv run python benchmarks/memory.py [--requests 64] [--streams 500] [--event-mb 200]

Runs `sidegate sidecar` (default limits) pinned to core 0, in front of an aiohttp upstream
in this process (core 1), and replays:

1. request bodies at concurrency 4, 16 and 64: 5 MB bodies (over `max_body_bytes`, refused
   with 413) and 3.5 MB bodies (admitted, forwarded);
2. 500 slow streams at once (an event every 0.5 s for 10 s);
3. one oversized SSE event (200 MB in one `data:` line), while /healthz is polled.

A thread samples the sidecar's VmRSS every 10 ms; each drill reports the peak and the RSS
once it is over, and what the clients got. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

sys.path.insert(0, str(Path(__file__).parent))
from overhead import free_port, wait_listening

LIMIT_MB = 256 * 1024 * 1024 / 1e6  # the injected sidecar's default limit, 256 Mi, in MB


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) * 1024 / 1e6 if match else 0.0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stopped = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def reset(self) -> float:
        peak, self.peak = self.peak, rss_mb(self.pid)
        return peak


def chunk(text: str) -> bytes:
    document = {"choices": [{"index": 0, "delta": {"content": text}}]}
    return b"data: " + json.dumps(document).encode() + b"\n\n"


async def upstream(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(
            {
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1},
            }
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    try:
        if body["model"] == "huge-event":
            size = request.app[EVENT_MB] * 1_000_000
            await response.write(b'data: {"choices": [{"delta": {"content": "')
            piece = b"x" * 1_000_000
            for _ in range(size // len(piece)):
                await response.write(piece)
            await response.write(b'"}}]}\n\n')
        else:
            for index in range(20):
                await response.write(chunk(f"w{index} "))
                await asyncio.sleep(0.5)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except ConnectionError:  # the sidecar cut the stream: what the drill expects
        pass
    return response


EVENT_MB = web.AppKey("event_mb", int)


async def post(session: aiohttp.ClientSession, url: str, body: bytes) -> str:
    try:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            await r.read()
            return str(r.status)
    except aiohttp.ClientError as exc:
        return type(exc).__name__


async def bodies(url: str, size: int, concurrency: int, count: int) -> collections.Counter[str]:
    body = json.dumps(
        {"model": "drill", "messages": [{"role": "user", "content": "x" * size}]}
    ).encode()
    results: collections.Counter[str] = collections.Counter()
    gate = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with gate:
                results[await post(session, url, body)] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return results


async def streams(url: str, count: int) -> collections.Counter[str]:
    body = json.dumps(
        {"model": "drill", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    results: collections.Counter[str] = collections.Counter()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> None:
            try:
                async with session.post(
                    url, data=body, headers={"content-type": "application/json"}
                ) as r:
                    text = await r.read()
                    results[f"{r.status} {'complete' if b'[DONE]' in text else 'cut'}"] += 1
            except aiohttp.ClientError as exc:
                results[type(exc).__name__] += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return results


async def huge_event(url: str, health: str) -> tuple[str, float]:
    body = json.dumps(
        {"model": "huge-event", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    worst = 0.0
    done = asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def poll() -> None:
            nonlocal worst
            while not done.is_set():
                started = time.perf_counter()
                try:
                    async with session.get(health, timeout=aiohttp.ClientTimeout(total=120)) as r:
                        await r.read()
                except (aiohttp.ClientError, TimeoutError):
                    pass  # counted as the time it took to fail
                worst = max(worst, time.perf_counter() - started)
                await asyncio.sleep(0.05)

        poller = asyncio.create_task(poll())
        try:
            async with session.post(
                url,
                data=body,
                headers={"content-type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=300),
            ) as r:
                text = await r.read()
                outcome = f"{r.status}, {'error event' if b'error' in text else 'no error'}"
        except aiohttp.ClientError as exc:
            outcome = f"{type(exc).__name__} after the error event"
        except TimeoutError:
            outcome = "no answer within 300 s"
        done.set()
        await poller
    return outcome, worst * 1000


class Rows:
    """The table, printed a row at a time: a drill that kills the sidecar keeps the rest."""

    def __init__(self) -> None:
        print(
            "| drill | clients got | peak RSS (MB) | RSS after (MB) | "
            f"peak vs 256 Mi ({LIMIT_MB:.0f} MB) |",
            flush=True,
        )
        print("| --- | --- | --- | --- | --- |", flush=True)

    def append(self, row: tuple[str, object, float, float]) -> None:
        name, got, peak, after = row
        share = 100 * peak / LIMIT_MB
        print(f"| {name} | {got} | {peak:.0f} | {after:.0f} | {share:.0f} % |", flush=True)


async def drill(args: argparse.Namespace) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[EVENT_MB] = args.event_mb
    app.router.add_post("/v1/chat/completions", upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    upstream_port, port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", upstream_port).start()
    with tempfile.TemporaryDirectory() as workdir:
        root = Path(workdir)
        (root / "credentials").mkdir()
        (root / "credentials" / "drill").write_text("drill-key-not-secret\n")
        (root / "policies").mkdir()
        (root / "policies" / "all.yaml").write_text(
            "apiVersion: sidegate.io/v1alpha1\nkind: RBACPolicy\n"
            "metadata: {name: all, namespace: default}\n"
            "spec: {subjects: [{kind: Namespace, name: default}], "
            "rules: [{effect: Allow, models: ['*']}]}\n"
        )
        config = {
            "listen": {"port": port},
            "credentials": {"directory": str(root / "credentials")},
            "policy": {"directory": str(root / "policies")},
            "providers": {
                "drill": {
                    "kind": "openai_compatible",
                    "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                    "allow_insecure_http": True,
                }
            },
            "routes": [{"model": "*", "provider": "drill"}],
            "logging": {"level": "ERROR"},
        }
        (root / "sidecar.yaml").write_text(yaml.safe_dump(config))
        sidecar = subprocess.Popen(  # noqa: ASYNC220 - once, before the drill starts
            [
                "taskset",
                "-c",
                "0",
                sys.executable,
                "-m",
                "sidegate",
                "sidecar",
                "-c",
                str(root / "sidecar.yaml"),
            ]
        )
        try:
            await asyncio.to_thread(wait_listening, port)
            await asyncio.sleep(1)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            sampler = Sampler(sidecar.pid)
            sampler.start()
            rest = rss_mb(sidecar.pid)
            sampler.reset()
            rows = Rows()
            rows.append(("at rest", "", rest, rest))
            for size, label in ((5_000_000, "5 MB bodies"), (3_500_000, "3.5 MB bodies")):
                for concurrency in (4, 16, 64):
                    got = await bodies(url, size, concurrency, max(args.requests, concurrency))
                    await asyncio.sleep(0.5)
                    rows.append(
                        (
                            f"{label}, concurrency {concurrency}",
                            dict(got),
                            sampler.reset(),
                            rss_mb(sidecar.pid),
                        )
                    )
            got = await streams(url, args.streams)
            await asyncio.sleep(0.5)
            rows.append(
                (f"{args.streams} slow streams", dict(got), sampler.reset(), rss_mb(sidecar.pid))
            )
            outcome, worst_ms = await huge_event(url, f"http://127.0.0.1:{port}/healthz")
            await asyncio.sleep(0.5)
            rows.append(
                (
                    f"one {args.event_mb} MB SSE event",
                    f"{outcome}; /healthz worst {worst_ms:.0f} ms",
                    sampler.reset(),
                    rss_mb(sidecar.pid),
                )
            )
            sampler.stopped.set()
        finally:
            sidecar.terminate()
            sidecar.wait(60)
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=64, help="bodies sent per drill")
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--event-mb", type=int, default=200)
    asyncio.run(drill(parser.parse_args()))


if __name__ == "__main__":
    main()
