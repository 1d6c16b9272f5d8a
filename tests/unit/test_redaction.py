"""The Secret type and the redacting log filter."""

from __future__ import annotations

import io
import json
import logging
import secrets
import sys
from typing import Any

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


def test_secret_masks_are_fixed_text() -> None:
    """Logs and error bodies show exactly these masks (log searches and tests key on them)."""
    secret = redact.Secret(fake_key())
    assert repr(secret) == "Secret('**********')"
    assert str(secret) == f"{secret}" == "**********"


def test_secrets_compare_by_value() -> None:
    value = fake_key()
    same, other = redact.Secret(value), redact.Secret(fake_key())
    assert redact.Secret(value) == same and hash(redact.Secret(value)) == hash(same)
    assert redact.Secret(value) != other
    assert redact.Secret(value) != value  # never equal to the bare string
    assert len({redact.Secret(value), same, other}) == 2
    # hashes spread like the values' (all-equal hashes would turn sets of secrets into lists)
    assert len({hash(redact.Secret(secrets.token_hex(8))) for _ in range(32)}) > 1
    assert redact.Secret(value) and not redact.Secret("")


def test_an_empty_value_does_not_stop_the_values_after_it() -> None:
    redactor = redact.Redactor()
    first, second = secrets.token_hex(12), secrets.token_hex(12)
    empty = redact.Secret("")
    redactor.remember([empty, redact.Secret(first), empty, redact.Secret(second)])
    assert redactor.scrub(f"{first} {second}") == f"{redact.MASK} {redact.MASK}"
    assert redactor.scrub("nothing secret here") == "nothing secret here"


def test_exactly_the_newest_values_up_to_the_bound_are_remembered() -> None:
    bound = redact._MAX_REMEMBERED
    values = [secrets.token_hex(12) for _ in range(bound + 1)]
    full = redact.Redactor()
    full.remember(redact.Secret(v) for v in values[1:])
    assert all(full.scrub(v) == redact.MASK for v in values[1:])
    one_more = redact.Redactor()
    one_more.remember(redact.Secret(v) for v in values[:1])
    one_more.remember(redact.Secret(v) for v in values[1:])
    assert one_more.scrub(values[0]) == values[0]  # the oldest one went
    assert all(one_more.scrub(v) == redact.MASK for v in values[1:])


def test_fragments_are_masked_from_sixteen_characters_on() -> None:
    redactor = redact.Redactor()
    sixteen, fifteen = secrets.token_hex(8), secrets.token_hex(8)[:15]
    redactor.remember([redact.Secret(sixteen), redact.Secret(fifteen)])
    assert (
        redactor.scrub(f"{sixteen[:8]}... ...{sixteen[-8:]}")
        == f"{redact.MASK}... ...{redact.MASK}"
    )
    assert redactor.scrub(fifteen) == redact.MASK
    assert redactor.scrub(f"{fifteen[:8]}...") == f"{fifteen[:8]}..."  # too short to fragment


def _runs(value: str, length: int = 8) -> set[str]:
    return {value[i : i + length] for i in range(len(value) - length + 1)}


def test_prefix_sharing_and_overlapping_secrets_leave_no_run_in_clear() -> None:
    """One secret a prefix of another, and two that overlap in the text: whichever is found
    first, no eight characters in a row of either secret stay readable."""
    head, middle, tail = (secrets.token_hex(5) for _ in range(3))  # ten characters each
    short, long_ = head + middle, head + middle + tail  # short is a prefix of long_
    left, right = head + middle, middle + tail  # overlap on `middle` in "head middle tail"
    for pair in ((short, long_), (long_, short), (left, right)):
        redactor = redact.Redactor()
        redactor.remember(redact.Secret(v) for v in pair)
        for text in (f"key={long_};", f"key={head}{middle}{tail};", f"{short}{tail}"):
            scrubbed = redactor.scrub(text)
            assert redact.MASK in scrubbed
            leaked = {run for v in pair for run in _runs(v)}
            assert not any(run in scrubbed for run in leaked), (pair, scrubbed)
    redactor = redact.Redactor()
    redactor.remember([redact.Secret(short), redact.Secret(long_)])
    assert redactor.scrub(f"key={long_};") == f"key={redact.MASK};"  # the whole, not a part


def test_scrub_bytes_survives_invalid_utf8() -> None:
    redactor = redact.Redactor()
    value = secrets.token_hex(12)
    redactor.remember([redact.Secret(value)])
    scrubbed = redactor.scrub_bytes(b"\xff\xfe " + value.encode() + " é".encode())
    assert scrubbed == f"\ufffd\ufffd {redact.MASK} é".encode()


def _emit(handler: logging.Handler, **record: Any) -> None:
    """One record through one handler, as logging would send it: no other handler (pytest's
    log capture, say) gets to format the record first."""
    handler.handle(logging.getLogger("test.redaction.direct").makeRecord(**record))


def test_exception_text_is_formatted_and_scrubbed_before_any_formatter_sees_it() -> None:
    redactor = redact.Redactor()
    value = secrets.token_hex(12)
    redactor.remember([redact.Secret(value)])
    for fmt in ("json", "text"):
        stream = io.StringIO()
        handler = logs.make_handler(redactor, fmt, stream=stream)
        try:
            raise ValueError(f"upstream said {value}")
        except ValueError:
            exc_info = sys.exc_info()
        _emit(
            handler,
            name="x",
            level=logging.ERROR,
            fn="f",
            lno=1,
            msg="failed",
            args=(),
            exc_info=exc_info,
        )
        output = stream.getvalue()
        assert value not in output and value[:8] not in output, fmt
        assert f"ValueError: upstream said {redact.MASK}" in output.replace("\\n", "\n"), fmt


def test_stack_info_is_kept_and_scrubbed() -> None:
    redactor = redact.Redactor()
    value = secrets.token_hex(12)
    redactor.remember([redact.Secret(value)])
    stream = io.StringIO()
    handler = logs.make_handler(redactor, "text", stream=stream)
    stack = (
        f'Stack (most recent call last):\n  File "app.py", line 3, in f\n    call(key="{value}")'
    )
    _emit(
        handler,
        name="x",
        level=logging.WARNING,
        fn="f",
        lno=1,
        msg="look",
        args=(),
        exc_info=None,
        sinfo=stack,
    )
    output = stream.getvalue()
    assert value not in output and value[-8:] not in output
    assert f'call(key="{redact.MASK}")' in output and "Stack (most recent call last)" in output


def test_looks_like_key_finds_a_key_that_starts_a_word() -> None:
    # A request id or tenant that is, or carries, a pasted key is caught; one that merely
    # contains "sk-" inside a word ("desk-team", "task-42", "risk-management") is not.
    key = "sk-" + "a" * 20
    assert redact.looks_like_key(key)
    assert redact.looks_like_key("AKIA" + "A" * 16)
    assert redact.looks_like_key("req-" + key) and redact.looks_like_key("x." + key)
    assert redact.looks_like_key("Bearer abc")
    assert not redact.looks_like_key("desk-team")
    assert not redact.looks_like_key("task-4242")
    assert not redact.looks_like_key("risk-management") and not redact.looks_like_key("ask-acme")
    assert not redact.looks_like_key("acme")


def test_the_redactor_knows_which_secrets_it_holds() -> None:
    redactor = redact.Redactor()
    value = "k" + secrets.token_hex(12)  # key-shaped by no pattern
    assert not redactor.holds_secret("team-" + value)
    redactor.remember([redact.Secret(value)])
    assert redactor.holds_secret(value) and redactor.holds_secret("team-" + value + "-x")
    assert not redactor.holds_secret(value[:-1]) and not redactor.holds_secret("team")
    # The one rule for client identifiers: either a key shape or a held secret.
    assert redactor.carries_credential("team-" + value)
    assert redactor.carries_credential("req-sk-" + "a" * 20)
    assert not redactor.carries_credential("task-4242")
