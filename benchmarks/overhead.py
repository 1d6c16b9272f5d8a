"""Overhead of the sidecar against calling the upstream directly.

    uv run python benchmarks/overhead.py [--seconds 10] [--repeat 2] [--limits] [--audit]

The sidecar always enforces an RBACPolicy (allow and deny rules); --limits adds rate limits
so high that nothing is refused but every request is counted (requests, tokens, concurrency).

Pins the sidecar to core 0 and the upstream and wrk to core 1 (so neither steals the other's
core; benchmarks/README.md says what the numbers mean), runs wrk serially (-c1) and at 32 connections against both, measures streaming
time to first byte with a raw-socket client, the sidecar's CPU per request (from
/proc/PID/stat across the throughput run) and its RSS. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Say something short."}],"max_tokens":64}'
# --api responses: OpenAI's Responses API, stored (the default), so every answer's id is also
# put on record for its creator.
RESPONSES_BODY = b'{"model":"bench-model","input":"Say something short.","max_output_tokens":64}'
APIS = {
    "chat": ("/v1/chat/completions", BODY),
    "responses": ("/v1/responses", RESPONSES_BODY),
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, path: str = "/") -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def to_ms(value: str) -> float:
    number, unit = re.match(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, seconds: int, body: bytes = BODY) -> dict[str, float]:
    output = subprocess.run(
        [
            "taskset",
            "-c",
            "1",
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(HERE / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BODY": body.decode()},
    ).stdout
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    for percentile in ("50", "90", "99"):
        result[f"p{percentile}"] = to_ms(re.search(rf"\s{percentile}%\s+(\S+)", output).group(1))  # type: ignore[union-attr]
    result["requests"] = float(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed requests at {url}:\n{output}")
    return result


def ttfb(port: int, path: str, body: bytes, count: int = 2000) -> float:
    """Median ms from sending a streaming request to the first body byte, keep-alive."""
    streamed = body[:-1] + b',"stream":true}'
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(streamed)}\r\n\r\n"
    ).encode() + streamed
    samples = []
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            started = time.perf_counter()
            connection.sendall(request)
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) == 0:
                data += connection.recv(65536)
            samples.append(time.perf_counter() - started)
            while not data.endswith(b"0\r\n\r\n"):  # drain the rest of the chunked stream
                data += connection.recv(65536)
    return statistics.median(samples) * 1000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(match.group(1)) / 1024  # type: ignore[union-attr]


POLICY = """\
apiVersion: sidegate.io/v1alpha1
kind: RBACPolicy
metadata: {name: bench, namespace: default}
spec:
  subjects: [{kind: ServiceAccount, name: default}]
  rules: [{effect: Allow, models: ["bench-*"]}, {effect: Deny, models: ["*-preview"]}]
  rateLimits: %s
"""
# Limits far above what one core can serve: every request is checked and counted (requests,
# tokens reserved and settled, a concurrency slot), none is refused.
LIMITS = "{requestsPerMinute: 10000000, tokensPerMinute: 10000000000, maxConcurrent: 10000}"


def sidecar_config(
    workdir: Path, upstream_port: int, port: int, extra: dict[str, Any], limits: bool
) -> Path:
    (workdir / "credentials").mkdir()
    (workdir / "credentials" / "bench").write_text("bench-key-not-secret\n")
    (workdir / "policies").mkdir()
    (workdir / "policies" / "bench.yaml").write_text(POLICY % (LIMITS if limits else "null"))
    config = {
        "policy": {"directory": str(workdir / "policies")},
        "listen": {"port": port},
        "credentials": {"directory": str(workdir / "credentials")},
        "providers": {
            "bench": {
                "kind": "openai_compatible",
                "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                "allow_insecure_http": True,
            }
        },
        "routes": [{"model": "bench-model", "provider": "bench"}],
        "logging": {"level": "WARNING"},
        **extra,
    }
    path = workdir / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per target; the median is reported"
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help="rate limits on (local backend): every request counted",
    )
    parser.add_argument(
        "--audit", action="store_true", help="audit on: an event per request, spooled and fsync'd"
    )
    parser.add_argument(
        "--api", choices=sorted(APIS), default="chat", help="the API requests are made to"
    )
    args = parser.parse_args()
    path, body = APIS[args.api]

    upstream_port, sidecar_port = free_port(), free_port()
    upstream = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, str(HERE / "upstream.py"), str(upstream_port)]
    )
    with tempfile.TemporaryDirectory() as workdir:
        extra = (
            {
                "audit": {
                    "spool_directory": str(Path(workdir) / "spool"),
                    "max_spool_bytes": 8 * 1024**3,
                }
            }
            if args.audit
            else {}
        )
        config = sidecar_config(Path(workdir), upstream_port, sidecar_port, extra, args.limits)
        sidecar = subprocess.Popen(
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
        try:
            wait_listening(upstream_port)
            wait_listening(sidecar_port)
            direct = f"http://127.0.0.1:{upstream_port}{path}"
            proxied = f"http://127.0.0.1:{sidecar_port}{path}"
            wrk(proxied, 8, 3, body)  # warm-up: connection pool, caches
            rows: dict[str, list[dict[str, float]]] = {
                "direct c1": [],
                "sidecar c1": [],
                "direct c32": [],
                "sidecar c32": [],
            }
            cpu_per_request: list[float] = []
            for _ in range(args.repeat):
                rows["direct c1"].append(wrk(direct, 1, args.seconds, body))
                rows["sidecar c1"].append(wrk(proxied, 1, args.seconds, body))
                rows["direct c32"].append(wrk(direct, 32, args.seconds, body))
                before = cpu_seconds(sidecar.pid)
                result = wrk(proxied, 32, args.seconds, body)
                cpu_per_request.append(
                    (cpu_seconds(sidecar.pid) - before) / result["requests"] * 1000
                )
                rows["sidecar c32"].append(result)
            ttfb_direct = statistics.median(
                ttfb(upstream_port, path, body) for _ in range(args.repeat)
            )
            ttfb_sidecar = statistics.median(
                ttfb(sidecar_port, path, body) for _ in range(args.repeat)
            )
            rss = rss_mb(sidecar.pid)
        finally:
            sidecar.terminate()
            sidecar.wait(10)
            upstream.terminate()
            upstream.wait(10)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    print("| measure | direct | through sidecar | added |")
    print("| --- | --- | --- | --- |")
    for p in ("p50", "p90", "p99"):
        print(
            f"| serial {p} (ms) | {med('direct c1', p):.3f} | {med('sidecar c1', p):.3f} | {med('sidecar c1', p) - med('direct c1', p):+.3f} |"
        )
    print(
        f"| req/s at 32 connections | {med('direct c32', 'rps'):,.0f} | {med('sidecar c32', 'rps'):,.0f} | |"
    )
    print(
        f"| streaming TTFB p50 (ms) | {ttfb_direct:.3f} | {ttfb_sidecar:.3f} | {ttfb_sidecar - ttfb_direct:+.3f} |"
    )
    print(f"| sidecar CPU per request (ms) | | {statistics.median(cpu_per_request):.3f} | |")
    print(f"| sidecar RSS after the runs (MB) | | {rss:.1f} | |")


if __name__ == "__main__":
    main()
