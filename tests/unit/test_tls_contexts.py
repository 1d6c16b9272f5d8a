"""tls.client_context: what the context promises, and real handshakes that show it keeps it.

tests/security/test_tls.py drives the same context through the sidecar; these handshakes are
direct (a TLS server thread on 127.0.0.1), so each promise is checked on its own.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from sidegate import tls


def test_defaults_verify_and_require_tls_1_2() -> None:
    context = tls.client_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.client_context("1.3").minimum_version == ssl.TLSVersion.TLSv1_3


@contextlib.contextmanager
def tls_server(cert: trustme.LeafCert) -> Iterator[int]:
    """Accepts connections and completes (or fails) one handshake each, until closed."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return  # closed
            with raw, contextlib.suppress(OSError):
                context.wrap_socket(raw, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone does not
        listener.close()
        thread.join(timeout=10)


def handshake(port: int, context: ssl.SSLContext, name: str) -> str | None:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as wrapped,
    ):
        return wrapped.version()


def test_the_ca_file_is_trusted_and_the_host_name_checked(
    ca: trustme.CA, server_cert: trustme.LeafCert, ca_file: Path
) -> None:
    with tls_server(server_cert) as port:
        # Control: the same server, the same CA and the right name shake hands.
        assert handshake(port, tls.client_context(ca_file=ca_file), "localhost") in (
            "TLSv1.2",
            "TLSv1.3",
        )
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            handshake(port, tls.client_context(ca_file=ca_file), "api.example.com")
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            handshake(port, tls.client_context(), "localhost")  # the system store lacks the CA
