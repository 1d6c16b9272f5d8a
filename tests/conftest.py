"""Fixtures shared by every tier: a throwaway CA, fake keys made at run time, and the
full stack (stand-in provider over TLS + sidecar) running on real sockets."""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import secrets
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import trustme

from sidegate import logs, redact, standin
from sidegate.sidecar import admin as admin_api
from sidegate.sidecar import app, settings
from sidegate.sidecar.metrics import Metrics
from tests.helpers.kubelet import ProjectedVolume
from tests.helpers.s3 import S3, start_s3
from tests.helpers.servers import LoopThread

# Key shapes that must never appear in what the sidecar emits (security invariant 1, docs/architecture.md).
KEY_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_-]{6,}|AKIA[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{20,}|(?i:bearer)\s+[A-Za-z0-9._~+/=-]{6,}"
)


# What apps pass as api_key: the SDKs insist on one; the sidecar never forwards it.
APP_PLACEHOLDER = "app-holds-no-provider-key"


def fake_key(prefix: str = "sk-test-") -> str:
    """A key-shaped random value, made at run time so no key-like text is committed."""
    return prefix + secrets.token_urlsafe(24).replace("-", "x").replace("_", "y")


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll until ``condition()``; return the seconds it took. Fails the test on timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


@dataclasses.dataclass
class Stack:
    """A running sidecar in front of a running TLS stand-in provider."""

    loop: LoopThread
    base_url: str  # the sidecar's /v1 URL, as an app would configure it
    provider_port: int
    state: standin.StandInState
    volume: ProjectedVolume
    keys: dict[str, str]  # provider → current key
    all_keys: set[str]  # every key this stack ever used, for leak checks
    log: io.StringIO
    metrics: Metrics
    config: settings.SidecarSettings
    clients: list[Any] = dataclasses.field(default_factory=list)
    admin_origin: str = ""
    admin_token: str = ""

    def openai(self, **headers: str) -> openai.OpenAI:
        """An OpenAI SDK client for this sidecar, as an app would hold it (closed on teardown)."""
        client = openai.OpenAI(
            base_url=self.base_url, api_key=APP_PLACEHOLDER, max_retries=0, default_headers=headers
        )
        self.clients.append(client)
        return client

    def anthropic(self) -> anthropic.Anthropic:
        client = anthropic.Anthropic(base_url=self.origin, api_key=APP_PLACEHOLDER, max_retries=0)
        self.clients.append(client)
        return client

    @property
    def policy_dir(self) -> Path:
        assert self.config.policy.directory is not None
        return self.config.policy.directory

    @property
    def origin(self) -> str:
        return self.base_url.removesuffix("/v1")

    def publish_keys(self, keys: dict[str, str], extra: dict[str, str] | None = None) -> None:
        """Swap the credential volume the way the kubelet does."""
        self.keys = dict(keys)
        self.all_keys.update(keys.values())
        self.all_keys.update((extra or {}).values())
        self.state.accepted_keys.update(keys.values())
        self.volume.publish({**keys, **(extra or {})})

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


ALLOW_ALL = """\
apiVersion: sidegate.io/v1alpha1
kind: RBACPolicy
metadata: {name: allow-all, namespace: default}
spec:
  subjects: [{kind: Namespace, name: default}]
  rules: [{effect: Allow, models: ["*"]}]
"""


def base_config(
    provider_port: int, ca_file: Path, credentials: Path, policies: Path | None = None
) -> dict[str, Any]:
    """A config for the stand-in provider; ``policies`` gets an allow-all policy if new."""
    tls = {"ca_file": str(ca_file)}
    origin = f"https://127.0.0.1:{provider_port}"
    if policies is None:
        policies = credentials.parent / (credentials.name + "-policies")
    if not policies.exists():
        policies.mkdir(parents=True)
        (policies / "allow-all.yaml").write_text(ALLOW_ALL)
    return {
        "credentials": {"directory": str(credentials)},
        "policy": {"directory": str(policies)},
        "providers": {
            "openai": {"kind": "openai", "base_url": origin + "/v1", "tls": tls},
            "anthropic": {"kind": "anthropic", "base_url": origin, "tls": tls},
            "azure": {
                "kind": "azure",
                "base_url": f"https://localhost:{provider_port}",
                "api_version": "2024-10-21",
                "tls": tls,
            },
            "compat": {"kind": "openai_compatible", "base_url": origin + "/v1", "tls": tls},
        },
        "routes": [
            {"model": "gpt-4o-mini", "provider": "openai"},
            {"model": "text-embedding-3-small", "provider": "openai"},
            {"model": "gpt-renamed", "provider": "openai", "upstream_model": "gpt-4o-2024-08-06"},
            {"model": "gpt-*", "provider": "openai"},
            {"model": "claude-*", "provider": "anthropic"},
            {"model": "azure-chat", "provider": "azure", "upstream_model": "prod-gpt4o"},
            {"model": "local-*", "provider": "compat"},
        ],
    }


def assert_no_secrets(text: str, keys: set[str]) -> None:
    for key in keys:
        assert key not in text, "a loaded key appears verbatim"
        assert key[-8:] not in text and key[:12] not in text, "a key fragment appears"
    match = KEY_SHAPES.search(text)
    assert match is None, f"key-shaped text appears: {match.group(0)[:6]}..."


@pytest.fixture
def make_stack(
    tmp_path: Path, ca_file: Path, server_cert: trustme.LeafCert
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []
    handlers: list[logging.Handler] = []

    def make(
        configure: Callable[[dict[str, Any]], None] | None = None, *, admin: bool = False
    ) -> Stack:
        loop = LoopThread()
        state = standin.StandInState()
        provider_port = loop.serve(
            standin.create_app(state), ssl_context=server_context(server_cert)
        )
        volume = ProjectedVolume(tmp_path / f"credentials-{len(stacks)}")
        keys = {
            "openai": fake_key(),
            "anthropic": fake_key("sk-ant-test-"),
            "azure": secrets.token_hex(16),
            "compat": fake_key(),
        }
        raw = base_config(provider_port, ca_file, volume.root)
        admin_token = secrets.token_urlsafe(24)
        if admin:
            token_dir = tmp_path / f"admin-{len(stacks)}"
            token_dir.mkdir()
            (token_dir / "token").write_text(admin_token)
            raw["admin"] = {"port": 0, "token_file": str(token_dir / "token")}
        if configure:
            configure(raw)
        config = settings.SidecarSettings.model_validate(raw)
        redactor = redact.Redactor()
        metrics = Metrics()
        log = io.StringIO()
        handler = logs.make_handler(redactor, "json", stream=log)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
        handlers.append(handler)
        stack = Stack(loop, "", provider_port, state, volume, {}, set(), log, metrics, config)
        stack.publish_keys(keys)
        application = app.create_app(config, redactor=redactor, metrics=metrics)
        port = loop.serve(
            application,
            max_line_size=config.limits.max_header_bytes,
            max_field_size=config.limits.max_header_bytes,
        )
        stack.base_url = f"http://127.0.0.1:{port}/v1"
        admin_app = admin_api.for_sidecar(application)
        if admin_app is not None:
            stack.admin_origin = f"http://127.0.0.1:{loop.serve(admin_app)}"
            stack.admin_token = admin_token
            stack.all_keys.add(admin_token)
        stacks.append(stack)
        return stack

    yield make
    for handler in handlers:
        logging.getLogger().removeHandler(handler)
    for stack in stacks:
        for client in stack.clients:
            client.close()
        stack.loop.close()
        # Every scenario doubles as a leak test: nothing the sidecar logged may hold a key.
        assert_no_secrets(stack.log.getvalue(), stack.all_keys)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@pytest.fixture
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS credential chain, pointed at throwaway values made at run time."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test" + secrets.token_hex(8))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secrets.token_hex(20))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def provider(server_cert: trustme.LeafCert) -> Iterator[tuple[int, standin.StandInState]]:
    """A stand-in provider over TLS on its own, for tests that run sidecars as processes."""
    loop = LoopThread()
    state = standin.StandInState()
    port = loop.serve(standin.create_app(state), ssl_context=server_context(server_cert))
    yield port, state
    loop.close()


@pytest.fixture
def s3(aws_environment: None) -> Iterator[S3]:
    """moto's S3 server on 127.0.0.1, empty, with the audit bucket (Object Lock on)."""
    server = start_s3()
    yield server
    server.stop()
