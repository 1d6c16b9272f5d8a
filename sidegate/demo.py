"""``sidegate demo``: the sidecar in front of a local stand-in provider, driven by the SDK.

Everything runs on 127.0.0.1 in this process; keys are random, made for this run, and
never printed (a short fingerprint stands in for them).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

from sidegate import redact, serving, standin
from sidegate.sidecar import app, settings

# What the app passes as api_key: the SDK insists on one, the sidecar ignores it.
APP_PLACEHOLDER = "unused"


def fingerprint(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name("." + path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


DEMO_POLICY = """\
apiVersion: sidegate.io/v1alpha1
kind: RBACPolicy
metadata: {name: demo, namespace: default}
spec:
  subjects: [{kind: ServiceAccount, name: default}]
  rules:
    - {effect: Allow, models: ["gpt-4o-mini", "text-embedding-*", "claude-*"]}
  rateLimits: {requestsPerMinute: 600, tokensPerMinute: 100000}
"""


def demo_config(
    provider_url: str, credentials: Path, policies: Path, port: int
) -> settings.SidecarSettings:
    local = {"base_url": provider_url, "allow_insecure_http": True}
    return settings.SidecarSettings.model_validate(
        {
            "listen": {"host": "127.0.0.1", "port": port},
            "credentials": {"directory": str(credentials)},
            "policy": {"directory": str(policies)},
            "providers": {
                "openai": {"kind": "openai", **local, "base_url": provider_url + "/v1"},
                "anthropic": {"kind": "anthropic", **local},
            },
            "routes": [
                {"model": "gpt-4o-mini", "provider": "openai"},
                {"model": "gpt-4o", "provider": "openai"},
                {"model": "text-embedding-3-small", "provider": "openai"},
                {"model": "claude-*", "provider": "anthropic"},
            ],
        }
    )


async def run(*, port: int, serve: bool, redactor: redact.Redactor) -> int:
    try:
        import openai
    except ImportError:
        print("sidegate demo drives the sidecar with the openai SDK: pip install 'sidegate[demo]'")
        return 2

    state = standin.StandInState()
    provider = await serving.start(standin.create_app(state), "127.0.0.1", 0)
    provider_url = f"http://127.0.0.1:{serving.bound_port(provider)}"
    with tempfile.TemporaryDirectory(prefix="sidegate-demo-") as workdir:
        credentials = Path(workdir) / "credentials"
        policies = Path(workdir) / "policies"
        credentials.mkdir()
        policies.mkdir()
        (policies / "demo.yaml").write_text(DEMO_POLICY)
        keys = {name: "demo-" + secrets.token_hex(16) for name in ("openai", "anthropic")}
        for name, key in keys.items():
            (credentials / name).write_text(key + "\n")
        state.accepted_keys.update(keys.values())
        config = demo_config(provider_url, credentials, policies, port)
        try:
            sidecar = await serving.start(
                app.create_app(config, redactor=redactor), "127.0.0.1", port
            )
        except OSError as exc:
            print(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}. Try --port 0.")
            await provider.cleanup()
            return 1
        base_url = f"http://127.0.0.1:{serving.bound_port(sidecar)}/v1"
        try:
            await asyncio.to_thread(_tour, openai, base_url, state, keys, credentials)
            if serve:
                print(f"\nServing at {base_url} (stand-in provider behind it). Ctrl-C stops.")
                print(
                    f"  curl -s {base_url}/chat/completions -H 'content-type: application/json' "
                    """-d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'"""
                )
                await serving.wait_for_signal()
        finally:
            await sidecar.cleanup()
            await provider.cleanup()
    return 0


def _tour(
    openai: Any, base_url: str, state: standin.StandInState, keys: dict[str, str], credentials: Path
) -> None:
    say = print
    say(f"Sidegate sidecar at {base_url}, in front of a local stand-in provider.")
    say("The app's client holds no provider key; it sends a placeholder.\n")
    client = openai.OpenAI(base_url=base_url, api_key=APP_PLACEHOLDER, max_retries=0)

    models = [m.id for m in client.models.list()]
    say(f"1. GET /v1/models -> {models}")

    reply = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello from the app"}]
    )
    say(f"2. chat completion -> {reply.choices[0].message.content!r}")
    say(f"   usage: {reply.usage.prompt_tokens} in, {reply.usage.completion_tokens} out")

    seen = state.received[-1]
    say(
        f"   the provider saw key {fingerprint(seen.key or '')}"
        f" (the sidecar's, from {credentials}/openai)"
    )
    say(f"   the app's placeholder reached it: {seen.key == APP_PLACEHOLDER}")

    say("3. streamed chat completion, chunk by chunk:")
    started = time.perf_counter()
    pieces = []
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "stream this back to me"}],
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    say(
        f"   {len(pieces)} chunks in {1000 * (time.perf_counter() - started):.1f} ms:"
        f" {''.join(pieces)!r}"
    )

    vectors = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    say(f"4. embeddings -> {len(vectors.data)} vectors of {len(vectors.data[0].embedding)} floats")

    try:
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "x"}],
            extra_body={"temprature": 0.2},
        )
    except openai.BadRequestError as exc:
        say(f"5. a typo in a field -> {exc.status_code}: {exc.body['message']}")
    try:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    except openai.PermissionDeniedError as exc:
        say(f"6. a model the RBACPolicy does not grant -> {exc.status_code}: {exc.body['message']}")

    new_key = "demo-" + secrets.token_hex(16)
    state.accepted_keys.add(new_key)
    write_atomically(credentials / "openai", new_key + "\n")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "after"}]
        )
        if state.received[-1].key == new_key:
            break
        time.sleep(0.05)
    say(
        f"7. rotated the key file -> provider now sees {fingerprint(state.received[-1].key or '')}"
        f" (was {fingerprint(keys['openai'])}); no restart"
    )

    write_atomically(credentials / "openai", "\n")
    time.sleep(0.2)
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "still?"}]
    )
    say(
        f"8. wrote an empty key file -> rejected, the provider still sees "
        f"{fingerprint(state.received[-1].key or '')}"
    )
    say(
        "\nNext: docs/configuration.md for a real config;"
        " `sidegate sidecar --config FILE` to run it."
    )
