"""TLS contexts for calls to providers: verified, TLS 1.2 at least."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

TLSVersionName = Literal["1.2", "1.3"]

_VERSIONS: dict[str, ssl.TLSVersion] = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


def client_context(minimum: TLSVersionName = "1.2", ca_file: Path | None = None) -> ssl.SSLContext:
    """A client context that verifies the peer's chain and host name.

    ``ca_file`` replaces the system trust store (a private CA or an egress proxy's CA);
    without it the system store is used.
    """
    context = ssl.create_default_context(
        purpose=ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None
    )
    # create_default_context already sets these; asserting them here keeps the guarantee
    # visible and safe from a future default change.
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.minimum_version = _VERSIONS[minimum]
    return context
