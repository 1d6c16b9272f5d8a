"""Reading token usage out of provider answers, whole or streamed, without slowing them.

A streamed answer is relayed event by event; only the events that carry a usage object are
parsed (one regex search decides), so the relay stays a byte copy for everything else.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from sidegate.sidecar import endpoints

_USAGE_OBJECT = re.compile(rb'"usage"\s*:\s*\{')
_EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclasses.dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    reported: bool = False  # whether the provider said anything at all

    @property
    def total(self) -> int:
        return self.input_tokens + self.output_tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _apply(usage: Usage, dialect: endpoints.Dialect, reported: Any, *, delta: bool = False) -> None:
    if not isinstance(reported, dict):
        return
    usage.reported = True
    if dialect == "openai":
        usage.input_tokens = _int(reported.get("prompt_tokens"))
        usage.output_tokens = _int(reported.get("completion_tokens"))
        return
    # Anthropic: cache reads and writes are input too; message_delta carries cumulative
    # output (and, in newer API versions, input) counts.
    input_tokens = (
        _int(reported.get("input_tokens"))
        + _int(reported.get("cache_creation_input_tokens"))
        + _int(reported.get("cache_read_input_tokens"))
    )
    if input_tokens or not delta:
        usage.input_tokens = input_tokens
    if "output_tokens" in reported:
        usage.output_tokens = _int(reported.get("output_tokens"))


_DECODER = json.JSONDecoder()


def from_body(dialect: endpoints.Dialect, data: bytes) -> Usage:
    """Usage from a whole JSON answer; zeros (reported=False) if it says none.

    Only the usage object is decoded, not the whole answer. Inside a JSON string a quote is
    always escaped, so an unescaped ``"usage": {`` can only be a key: model output cannot
    forge one.
    """
    usage = Usage()
    match = None
    for match in _USAGE_OBJECT.finditer(data):  # noqa: B007 - the last one is the top-level key
        pass
    if match is None:
        return usage
    try:
        reported, _ = _DECODER.raw_decode(data[match.end() - 1 :].decode("utf-8", "replace"))
    except ValueError:
        return usage
    _apply(usage, dialect, reported)
    return usage


class EventSplitter:
    """Cuts a byte stream into whole SSE events (each with its blank-line terminator)."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._buffer + chunk if self._buffer else chunk
        events: list[bytes] = []
        start = 0
        while (end := _EVENT_END.search(data, start)) is not None:
            events.append(data[start : end.end()])
            start = end.end()
        self._buffer = data[start:]
        return events

    def rest(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return rest


class StreamMeter:
    """Watches relayed SSE events for usage; says which events to hide from the client.

    ``hide_usage_chunk`` is set when the sidecar itself asked OpenAI for
    ``stream_options.include_usage``: the extra final chunk (no choices, only usage) is then
    read here and not shown to a client that did not ask for it.
    """

    __slots__ = ("_dialect", "_hide_usage_chunk", "usage")

    def __init__(self, dialect: endpoints.Dialect, *, hide_usage_chunk: bool) -> None:
        self._dialect: endpoints.Dialect = dialect
        self._hide_usage_chunk = hide_usage_chunk
        self.usage = Usage()

    def keep(self, event: bytes) -> bool:
        """Record any usage in ``event``; False if the event must not reach the client."""
        if _USAGE_OBJECT.search(event) is None:
            return True
        document = _event_json(event)
        if not isinstance(document, dict):
            return True
        if self._dialect == "openai":
            _apply(self.usage, "openai", document.get("usage"))
            return not (self._hide_usage_chunk and document.get("choices") == [])
        kind = document.get("type")
        if kind == "message_start" and isinstance(document.get("message"), dict):
            _apply(self.usage, "anthropic", document["message"].get("usage"))
        elif kind == "message_delta":
            _apply(self.usage, "anthropic", document.get("usage"), delta=True)
        return True


def _event_json(event: bytes) -> Any:
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return json.loads(b"\n".join(lines))
    except ValueError:
        return None
