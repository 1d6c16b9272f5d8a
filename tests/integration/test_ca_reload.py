"""A provider's `tls.ca_file` is reloaded when it changes (a private CA rotated), and a bad
one keeps the trust in force."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

from tests.conftest import Stack, wait_for
from tests.helpers.http import call, chat_body

CHAT = "/v1/chat/completions"


def test_a_rotated_ca_file_is_trusted_without_a_restart(
    make_stack: Callable[..., Stack], tmp_path: Path, ca_file: Path
) -> None:
    trust = tmp_path / "trust"
    trust.mkdir()
    (trust / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())  # not the provider's CA

    def private_ca(raw: dict[str, Any]) -> None:
        raw["providers"]["openai"]["tls"] = {"ca_file": str(trust / "ca.pem")}

    stack = make_stack(private_ca)
    status, _, answer = call(stack.origin, CHAT, chat_body())
    assert status == 502 and answer["error"]["code"] == "upstream_tls"

    (trust / "ca.pem").write_bytes(ca_file.read_bytes())  # the CA rotated to the right one
    wait_for(lambda: call(stack.origin, CHAT, chat_body())[0] == 200)

    (trust / "ca.pem").write_text("not a certificate\n")  # a bad file: the trust stays
    wait_for(lambda: "CA file rejected" in stack.log.getvalue())
    assert call(stack.origin, CHAT, chat_body())[0] == 200
