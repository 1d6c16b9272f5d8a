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
# What a provider's JSON can make the decoder raise: ValueError when it is not JSON,
# RecursionError when it nests deeper than the interpreter's stack (a few thousand bytes of
# brackets do it). Either way the answer carries no usage we can read; it is still relayed.
_UNREADABLE = (ValueError, RecursionError)
# Cheap test before an event is parsed to see whether it ends the stream.
_MAYBE_LAST = re.compile(rb"\[DONE\]|message_stop|error|response\.(?:completed|failed|incomplete)")
# The Responses API's events that end a stream; each carries the final response object
# (with its usage).
RESPONSE_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})
_RESPONSE_END_NAMES = frozenset(name.encode() for name in RESPONSE_ENDS)
# A blank line ends an event; a line ends in CRLF, LF or a lone CR. A CR is a lone one only
# once the next byte is known not to be LF: a CR at the end of what has arrived waits, so
# the events are the same however the stream is chunked.
_EVENT_END = re.compile(rb"(?:\r\n|\r(?=[^\n])|\n)(?:\r\n|\r(?=[^\n])|\n)")


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
        # Chat and completions say prompt/completion; the Responses API says input/output
        # (cached input is part of input_tokens there).
        usage.input_tokens = _int(reported.get("prompt_tokens", reported.get("input_tokens")))
        usage.output_tokens = _int(reported.get("completion_tokens", reported.get("output_tokens")))
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
    except _UNREADABLE:
        return usage
    _apply(usage, dialect, reported)
    return usage


class EventTooLarge(ValueError):
    """A provider sent an SSE event longer than the configured maximum."""


class EventSplitter:
    """Cuts a byte stream into whole SSE events (each with its blank-line terminator).

    Linear in the bytes received: each chunk is scanned once (plus the three bytes before
    it, where a terminator may straddle the boundary), and a partial event is kept as a list
    of pieces joined only when it completes. Lines may end in CRLF, LF or a bare CR, as the
    SSE specification allows. A partial event longer than ``max_event_bytes`` raises
    ``EventTooLarge`` instead of growing without bound.
    """

    __slots__ = ("_held", "_max", "_parts")

    def __init__(self, max_event_bytes: int = 1024 * 1024) -> None:
        self._parts: list[bytes] = []
        self._held = 0
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        events: list[bytes] = []
        start = 0
        if self._parts:
            carry = self._tail()
            end = _EVENT_END.search(carry + chunk)
            if end is None:
                self._hold(chunk)
                return events
            # Never inside the carry: a terminator there would have been found when it
            # arrived, unless it needed this chunk's first byte to be told from a CRLF.
            start = end.end() - len(carry)
            self._parts.append(chunk[:start])
            events.append(self._complete(b"".join(self._parts)))
            self._parts, self._held = [], 0
        while (end := _EVENT_END.search(chunk, start)) is not None:
            events.append(self._complete(chunk[start : end.end()]))
            start = end.end()
        if start < len(chunk):
            self._hold(chunk[start:] if start else chunk)
        return events

    def _tail(self) -> bytes:
        """The last three bytes held (a terminator is at most four bytes long)."""
        tail = b""
        for part in reversed(self._parts):
            tail = part[-3:] + tail
            if len(tail) >= 3:
                return tail[-3:]
        return tail

    def _hold(self, piece: bytes) -> None:
        self._held += len(piece)
        if self._held > self._max:
            self._parts, self._held = [], 0
            raise EventTooLarge(f"an event is longer than {self._max} bytes")
        self._parts.append(piece)

    def _complete(self, event: bytes) -> bytes:
        if len(event) > self._max:
            raise EventTooLarge(f"an event is longer than {self._max} bytes")
        return event

    def rest(self) -> bytes:
        rest = b"".join(self._parts)
        self._parts, self._held = [], 0
        return rest


class StreamMeter:
    """Watches relayed SSE events for usage; says which events to hide from the client.

    ``hide_usage_chunk`` is set when the sidecar itself asked OpenAI for
    ``stream_options.include_usage``: the extra final chunk (no choices, only usage) is then
    read here and not shown to a client that did not ask for it.
    """

    __slots__ = ("_dialect", "_hide_usage_chunk", "finished", "response_id", "usage")

    def __init__(self, dialect: endpoints.Dialect, *, hide_usage_chunk: bool) -> None:
        self._dialect: endpoints.Dialect = dialect
        self._hide_usage_chunk = hide_usage_chunk
        self.usage = Usage()
        # The Responses API's id, from its first event (response.created).
        self.response_id: str | None = None
        # Whether the stream's own last word went by: OpenAI's `data: [DONE]`, Anthropic's
        # message_stop, the Responses API's response.completed/failed/incomplete, or an
        # error event from the provider. A stream that ends without one
        # was cut off, however cleanly the connection closed.
        self.finished = False

    def keep(self, event: bytes) -> bool:
        """Record any usage in ``event``; False if the event must not reach the client."""
        if not self.finished and _MAYBE_LAST.search(event) is not None:
            self.finished = _is_last(self._dialect, event)
        if self.response_id is None and event.startswith(b"event: response.created"):
            created = _event_json(event)
            response = created.get("response") if isinstance(created, dict) else None
            if isinstance(response, dict) and isinstance(response.get("id"), str):
                self.response_id = response["id"]
        if _USAGE_OBJECT.search(event) is None:
            return True
        document = _event_json(event)
        if not isinstance(document, dict):
            return True
        if self._dialect == "openai":
            final = document.get("response")
            if document.get("type") in RESPONSE_ENDS and isinstance(final, dict):
                _apply(self.usage, "openai", final.get("usage"))
                return True
            _apply(self.usage, "openai", document.get("usage"))
            return not (self._hide_usage_chunk and document.get("choices") == [])
        kind = document.get("type")
        if kind == "message_start" and isinstance(document.get("message"), dict):
            _apply(self.usage, "anthropic", document["message"].get("usage"))
        elif kind == "message_delta":
            _apply(self.usage, "anthropic", document.get("usage"), delta=True)
        return True


def _is_last(dialect: endpoints.Dialect, event: bytes) -> bool:
    fields = _event_fields(event)
    name = fields.get(b"event")
    if name in (b"error", b"message_stop") or name in _RESPONSE_END_NAMES:
        return True
    if name is not None and name.startswith(b"response."):
        return False  # a typed Responses event that is not an end, whatever its text says
    data = fields.get(b"data", b"")
    if dialect == "openai" and data.strip() == b"[DONE]":
        return True
    if b"error" in data or b"message_stop" in data or b"response." in data:
        try:
            document = json.loads(data)
        except _UNREADABLE:
            return False
        if isinstance(document, dict):
            kind = document.get("type")
            return "error" in document or kind in ("error", "message_stop") or kind in RESPONSE_ENDS
    return False


def _event_fields(event: bytes) -> dict[bytes, bytes]:
    """The event's last `event:` and its joined `data:` lines, as an SSE client reads them."""
    fields: dict[bytes, bytes] = {}
    data: list[bytes] = []
    for line in event.splitlines():
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            data.append(value)
        elif name == b"event":
            fields[b"event"] = value
    if data:
        fields[b"data"] = b"\n".join(data)
    return fields


def _event_json(event: bytes) -> Any:
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    try:
        return json.loads(b"\n".join(lines))
    except _UNREADABLE:
        return None
