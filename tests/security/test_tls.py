"""TLS to providers: verified chains, TLS 1.2 at least (1.3 when configured), no plain http."""

from __future__ import annotations

import gc
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from sidegate import standin
from tests.conftest import Stack
from tests.helpers.http import call, chat_body
from tests.helpers.servers import LoopThread

CHAT = "/v1/chat/completions"


@pytest.fixture
def other_loop() -> Iterator[LoopThread]:
    loop = LoopThread()
    yield loop
    loop.close()
    # asyncio's server side leaves the transport of a refused TLS handshake to the garbage
    # collector; that test server's leak is not the sidecar's, so collect it quietly here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def legacy_server_context(cert: trustme.LeafCert, maximum: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # deliberately legacy: that is the point of this server
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = maximum
    # OpenSSL 3 refuses TLS < 1.2 at the default security level even on the server side.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    cert.configure_cert(context)
    return context


def point_openai_at(port: int, **tls: Any) -> Callable[[dict[str, Any]], None]:
    def configure(raw: dict[str, Any]) -> None:
        provider = raw["providers"]["openai"]
        provider["base_url"] = f"https://127.0.0.1:{port}/v1"
        provider["tls"] = {**provider["tls"], **tls}

    return configure


def handshake(port: int, context: ssl.SSLContext) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        return wrapped.version()


def test_provider_limited_to_tls_1_1_is_refused(
    make_stack: Callable[..., Stack],
    other_loop: LoopThread,
    server_cert: trustme.LeafCert,
    ca_file: Path,
) -> None:
    state = standin.StandInState()
    port = other_loop.serve(
        standin.create_app(state),
        ssl_context=legacy_server_context(server_cert, ssl.TLSVersion.TLSv1_1),
    )
    # Control: the server does speak TLS 1.1 to a client that allows it, so the refusal
    # below is about the version, not a broken server.
    permissive = ssl.create_default_context(cafile=str(ca_file))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    assert handshake(port, permissive) == "TLSv1.1"

    stack = make_stack(point_openai_at(port))
    state.accepted_keys.update(stack.keys.values())
    status, _, answer = call(stack.origin, CHAT, chat_body())
    # OpenSSL's server side resets the handshake (no common version), so the sidecar sees a
    # reset rather than a TLS alert: a 502 either way, and nothing reached the provider.
    assert status == 502
    assert answer["error"]["code"] in ("upstream_tls", "upstream_unreachable")
    assert not state.received


def test_minimum_1_3_refuses_a_1_2_provider(
    make_stack: Callable[..., Stack], other_loop: LoopThread, server_cert: trustme.LeafCert
) -> None:
    state = standin.StandInState()
    port = other_loop.serve(
        standin.create_app(state),
        ssl_context=legacy_server_context(server_cert, ssl.TLSVersion.TLSv1_2),
    )
    state.accepted_keys.add("unused")
    stack_12 = make_stack(point_openai_at(port))
    state.accepted_keys.update(stack_12.keys.values())
    assert call(stack_12.origin, CHAT, chat_body())[0] == 200  # control: 1.2 is fine by default

    stack_13 = make_stack(point_openai_at(port, min_version="1.3"))
    status, _, answer = call(stack_13.origin, CHAT, chat_body())
    assert status == 502 and answer["error"]["code"] in ("upstream_tls", "upstream_unreachable")
    assert len(state.received) == 1  # only the control request got through


def test_certificate_from_an_untrusted_ca_is_refused(
    make_stack: Callable[..., Stack], other_loop: LoopThread
) -> None:
    stranger = trustme.CA().issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger.configure_cert(context)
    state = standin.StandInState()
    port = other_loop.serve(standin.create_app(state), ssl_context=context)
    stack = make_stack(point_openai_at(port))
    status, _, answer = call(stack.origin, CHAT, chat_body())
    assert status == 502
    assert "certificate verification failed" in answer["error"]["message"]
    assert not state.received


def test_certificate_for_another_host_name_is_refused(
    make_stack: Callable[..., Stack], other_loop: LoopThread, ca: trustme.CA
) -> None:
    wrong_name = ca.issue_cert("api.example.com")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    wrong_name.configure_cert(context)
    port = other_loop.serve(standin.create_app(standin.StandInState()), ssl_context=context)
    stack = make_stack(point_openai_at(port))
    status, _, answer = call(stack.origin, CHAT, chat_body())
    assert status == 502 and answer["error"]["code"] == "upstream_tls"
