"""The Secret type and the redacting log filter."""

from __future__ import annotations

import io
import json
import logging
import secrets

from sidegate import logs, redact
from tests.conftest import fake_key


def test_secret_never_shows_itself() -> None:
    key = fake_key()
    secret = redact.Secret(key)
    for shown in (
        repr(secret),
        str(secret),
        f"{secret}",
        f"{secret!r}",
        str([secret]),
        str({"k": secret}),
    ):
        assert key not in shown
    assert secret.reveal() == key


def test_key_shapes_are_scrubbed() -> None:
    redactor = redact.Redactor()
    shapes = [
        fake_key("sk-"),
        fake_key("sk-proj-"),
        fake_key("sk-ant-api03-"),
        "AKIA" + "ABCDEFGHIJKLMNOP",
        "AIza" + secrets.token_hex(15),
        "Bearer " + "abc.def.ghi",
        "bearer " + "lowercase-token",
        "sk-ab" + "*" * 20 + "wxyz",  # a provider's masked echo
    ]
    for shape in shapes:
        scrubbed = redactor.scrub(f"before {shape} after")
        assert scrubbed == f"before {redact.MASK} after", shape


def test_remembered_values_and_their_fragments_are_scrubbed() -> None:
    redactor = redact.Redactor()
    value = secrets.token_hex(16)  # no known shape, like an Azure key
    redactor.remember([redact.Secret(value)])
    assert value not in redactor.scrub(f"x {value} y")
    assert value[:8] not in redactor.scrub(f"starts {value[:8]}...")
    assert value[-8:] not in redactor.scrub(f"ends ...{value[-8:]}")


def test_remembered_values_are_bounded() -> None:
    redactor = redact.Redactor()
    values = [secrets.token_hex(12) for _ in range(1000)]
    redactor.remember(redact.Secret(value) for value in values)
    assert values[0] in redactor.scrub(values[0])  # forgotten, oldest first
    assert values[-1] not in redactor.scrub(values[-1])


def test_log_filter_scrubs_message_args_extras_and_tracebacks() -> None:
    redactor = redact.Redactor()
    key = "plain" + "secretvalue0123456789"
    redactor.remember([redact.Secret(key)])
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction")
    logger.propagate = False
    handler = logs.make_handler(redactor, "json", stream=stream)
    logger.addHandler(handler)
    try:
        logger.warning("key is %s", key, extra={"detail": f"header=Bearer {key}"})
        try:
            raise ValueError(f"upstream said {key}")
        except ValueError:
            logger.exception("failed with %r", {"api_key": key})
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert key not in output
    assert key[:8] not in output and key[-8:] not in output
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines[0]["msg"] == f"key is {redact.MASK}"
    assert "ValueError: upstream said" in lines[1]["exc"]


def test_extras_of_any_type_are_scrubbed() -> None:
    """Libraries (kopf) log with dict and object extras; none of them escapes the filter."""

    class Holder:
        def __str__(self) -> str:
            return f"Holder(token={key})"

    redactor = redact.Redactor()
    key = "plain" + secrets.token_hex(12)
    redactor.remember([redact.Secret(key)])
    stream = io.StringIO()
    logger = logging.getLogger("test.redaction.extras")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = logs.make_handler(redactor, "json", stream=stream)
    logger.addHandler(handler)
    try:
        logger.info(
            "object event",
            extra={
                "k8s_ref": {"name": "llm-keys", "data": {"openai": key}, "keys": [key, 3]},
                "holder": Holder(),
                "count": 2,
                "settings": "kopf's settings are left out",
            },
        )
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert key not in output and key[-8:] not in output
    (line,) = [json.loads(text) for text in output.splitlines()]
    assert line["k8s_ref"]["data"]["openai"] == redact.MASK
    assert line["k8s_ref"]["keys"] == [redact.MASK, 3]
    assert line["holder"] == f"Holder(token={redact.MASK})"
    assert line["count"] == 2 and "settings" not in line
