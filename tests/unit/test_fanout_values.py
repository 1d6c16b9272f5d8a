"""Reading a Secret's values as text (``fanout.decode``): a Secret holds any bytes, and a
value that is not base64 of UTF-8 text is left out and named, never raised on."""

from __future__ import annotations

import base64

from sidegate.operator import fanout


def secret(**data: object) -> dict[str, object]:
    return {"data": data}


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_text_values_are_decoded() -> None:
    found = secret(openai=b64(b"key-one"), anthropic=b64("clé".encode()))
    assert fanout.decode(found) == {"openai": "key-one", "anthropic": "clé"}
    assert fanout.undecodable(found) == []


def test_values_that_are_not_text_are_left_out_and_named() -> None:
    found = secret(
        good=b64(b"key"),
        binary=b64(b"\xff\xfe"),  # not UTF-8
        garbled="not base64!",  # not base64 (the API server never stores this; a hand edit)
        number=7,  # not a string at all
    )
    assert fanout.decode(found) == {"good": "key"}
    assert fanout.undecodable(found) == ["binary", "garbled", "number"]


def test_an_absent_secret_or_data_has_no_values() -> None:
    for empty in (None, {}, {"data": None}):
        assert fanout.decode(empty) == {}
        assert fanout.undecodable(empty) == []
