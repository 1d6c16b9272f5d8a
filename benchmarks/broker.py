"""One broker replica holding thousands of long-polls pushes a new version to all of them.

    uv run python benchmarks/broker.py [--connections 5000] [--client-processes 2]

The Kubernetes API is kmock (this process, plain HTTP) with the release namespace's objects,
one injected pod per connection and a bound token for each (TokenReview answered by the
emulator, as in the tests). The broker is the real `sidegate broker` command, a process of
its own logged in through a kubeconfig. The clients are other processes (uvloop, aiohttp,
one TLS connection each): every client takes its first delivery, then long-polls for the
next. When the broker reports every long-poll waiting, this process rotates the provider
key in the credentials Secret and the clients record when each answer arrives.

Reported: time from the Secret update to the first and last delivery; the broker's RSS at
rest with every connection held, and its CPU time for the push (utime+stime from /proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import trustme
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sidegate.policy import signing
from tests.helpers import brokers
from tests.helpers.kubernetes import cluster
from tests.helpers.processes import free_port
from tests.policies import allow, policy


def raise_fd_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# The client process --------------------------------------------------------------------


def clients(port: int, ca_file: str, tokens: list[str], pipe: Any) -> None:
    raise_fd_limit()
    try:
        import uvloop

        uvloop.run(_clients(port, ca_file, tokens, pipe))
    except ImportError:
        asyncio.run(_clients(port, ca_file, tokens, pipe))


async def _clients(port: int, ca_file: str, tokens: list[str], pipe: Any) -> None:
    import ssl

    context = ssl.create_default_context(cafile=ca_file)
    url = f"https://127.0.0.1:{port}/v1/delivery"
    connector = aiohttp.TCPConnector(ssl=context, limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    arrivals: list[float] = []
    setup = asyncio.Semaphore(100)  # the first deliveries, not all at once
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(token: str) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            async with setup, session.get(url, params={"after": ""}, headers=headers) as answer:
                assert answer.status == 200, answer.status
                version = json.loads(await answer.read())["version"]
            while True:
                params = {"after": version, "wait": "600"}
                async with session.get(url, params=params, headers=headers) as answer:
                    if answer.status == 200:
                        await answer.read()
                        arrivals.append(time.monotonic())
                        return

        started = time.monotonic()
        tasks = [asyncio.create_task(one(t)) for t in tokens]
        pipe.send(("connecting", started))
        await asyncio.gather(*tasks)
    pipe.send(("arrivals", arrivals))


# The driver ----------------------------------------------------------------------------


async def wait_for_metric(probe: str, name: str, value: float, seconds: float) -> float:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(probe + "/metrics") as answer:
                    for line in (await answer.text()).splitlines():
                        if line.startswith(name + " "):
                            found = float(line.split()[1])
                            if found >= value:
                                return found
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not reach {value}")
            await asyncio.sleep(0.2)


async def run(connections: int, processes: int, workdir: Path) -> dict[str, float]:
    raise_fd_limit()
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = brokers.write_cert(cert, workdir)
    ca_file = workdir / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with cluster() as (k8s, url):
        key = signing.generate_private_key()
        trusted = brokers.public_keys(key)
        keys = {"openai": "bench-" + secrets.token_hex(16)}
        envelope = brokers.signed_bundle("team-a", [policy("p", rules=[allow("gpt-*")])], key)
        for obj in (
            brokers.public_configmap(trusted),
            brokers.credentials_secret(keys),
            brokers.bundle_secret("team-a", envelope),
        ):
            await brokers.put(k8s, obj)
        began = time.monotonic()
        tokens = []
        for index in range(connections):
            pod = await brokers.create_pod(
                k8s, brokers.injected_pod("team-a", f"app-{index}", trusted)
            )
            tokens.append(k8s.issue_token("team-a", "app", pod=pod, seconds=3600))
        print(f"{connections} pods and tokens in {time.monotonic() - began:.1f} s", flush=True)

        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "k", "cluster": {"server": url}}],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "k", "context": {"cluster": "k", "user": "u"}}],
                    "current-context": "k",
                }
            )
        )
        api_port, probe_port = free_port(), free_port()
        sidecar_config = workdir / "sidecar.yaml"  # what the pods were injected from
        sidecar_config.write_text(yaml.safe_dump(brokers.CHART_CONFIG), encoding="utf-8")
        broker = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-m",
                "sidegate",
                "broker",
                "--namespace",
                brokers.RELEASE,
                "--listen-port",
                str(api_port),
                "--probe-port",
                str(probe_port),
                "--certfile",
                str(certfile),
                "--keyfile",
                str(keyfile),
                "--sidecar-image",
                brokers.IMAGE,
                "--sidecar-config",
                str(sidecar_config),
                "--max-wait",
                "600",
                "--log-level",
                "WARNING",
            ],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
        probe = f"http://127.0.0.1:{probe_port}"
        try:
            await wait_for_metric(probe, "sidegate_broker_namespaces", 1, 30)
            rss_idle = proc_rss_mb(broker.pid)
            pipes, workers = [], []
            for part in range(processes):
                parent, child = multiprocessing.Pipe()
                worker = multiprocessing.Process(
                    target=clients, args=(api_port, str(ca_file), tokens[part::processes], child)
                )
                worker.start()
                pipes.append(parent)
                workers.append(worker)
            connecting = min([(await asyncio.to_thread(p.recv))[1] for p in pipes])
            await wait_for_metric(probe, "sidegate_broker_waiting", connections, 1800)
            held = time.monotonic() - connecting
            await asyncio.sleep(2)  # let the connect storm's garbage settle
            rss = proc_rss_mb(broker.pid)
            cpu_before = proc_cpu_seconds(broker.pid)
            load = os.getloadavg()[0]
            rotated = time.monotonic()
            await brokers.put(
                k8s, brokers.credentials_secret({"openai": "bench-" + secrets.token_hex(16)})
            )
            arrivals = []
            for parent in pipes:
                arrivals.extend((await asyncio.to_thread(parent.recv))[1])
            for worker in workers:
                worker.join(30)
            cpu_push = proc_cpu_seconds(broker.pid) - cpu_before
            rss_after = proc_rss_mb(broker.pid)
        finally:
            broker.terminate()
            await broker.wait()
    deltas = sorted(a - rotated for a in arrivals)
    return {
        "connections": len(arrivals),
        "connect_and_first_delivery_s": held,
        "first_delivery_s": deltas[0],
        "median_delivery_s": statistics.median(deltas),
        "last_delivery_s": deltas[-1],
        "broker_rss_mb_idle": rss_idle,
        "broker_rss_mb_holding": rss,
        "broker_rss_mb_after_push": rss_after,
        "broker_cpu_s_for_push": cpu_push,
        "load_average_1min_at_push": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument(
        "--client-processes", type=int, default=2, help="processes sharing the connections"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        result = asyncio.run(run(args.connections, args.client_processes, Path(directory)))
    for name, value in result.items():
        print(f"{name}: {value:.3f}" if isinstance(value, float) else f"{name}: {value}")


if __name__ == "__main__":
    main()
