"""The request bodies the sidecar reads, validated strictly and bounded.

Only the fields the sidecar itself reads are typed here (model, messages, stream, token
bounds); everything else a provider understands passes through untouched, as raw bytes. A
top-level field that is neither read here nor a known parameter of the target API, nor
allowed by config, is refused with a 400 that names it: a typo or an injected field should
fail loudly at the gateway, not be silently dropped or forwarded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidegate import errors
from sidegate.sidecar import endpoints

_MODEL_NAME = Field(min_length=1, max_length=256)
_MAX_MESSAGES = 100_000


class _Body(BaseModel):
    # strict: "stream": "true" or "max_tokens": "5" are errors, not coerced guesses.
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    model: str = _MODEL_NAME
    stream: bool | None = None

    @property
    def streaming(self) -> bool:
        return bool(self.stream)

    @property
    def output_budget(self) -> int | None:
        """The most output tokens the request allows itself, if it says."""
        return None


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    include_usage: bool | None = None


class ChatCompletionBody(_Body):
    messages: list[_Message] = Field(min_length=1, max_length=_MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    stream_options: StreamOptions | None = None
    store: bool | None = None  # read for retention policies

    @property
    def output_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionBody(_Body):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1, le=128)
    stream_options: StreamOptions | None = None

    @property
    def output_budget(self) -> int | None:
        return self.max_tokens


class EmbeddingBody(_Body):
    input: str | list[str] | list[int] | list[list[int]]
    stream: None = None  # embeddings never stream; `stream: true` is an error


class _AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesBody(_Body):
    messages: list[_AnthropicMessage] = Field(min_length=1, max_length=_MAX_MESSAGES)
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None

    @property
    def output_budget(self) -> int | None:
        return self.max_tokens


class ResponseBody(_Body):
    """OpenAI's Responses API, create. ``store`` and ``background`` are read here because
    policy may require that nothing is kept at the provider."""

    input: str | list[dict[str, Any]] | None = Field(None, max_length=_MAX_MESSAGES)
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    previous_response_id: str | None = Field(None, min_length=1, max_length=256)
    store: bool | None = None
    background: bool | None = None

    @property
    def output_budget(self) -> int | None:
        return self.max_output_tokens


class CountTokensBody(_Body):
    """Anthropic's ``/v1/messages/count_tokens``: a messages request without its output
    parameters (no ``max_tokens``, no streaming)."""

    messages: list[_AnthropicMessage] = Field(min_length=1, max_length=_MAX_MESSAGES)
    system: str | list[dict[str, Any]] | None = None
    stream: None = None


# The model OpenAI moderates with when a request names none (its documented default): the
# name policy decides on and routing resolves. The body goes upstream as sent.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"


class ModerationBody(_Body):
    input: str | list[str] | list[dict[str, Any]]
    model: str = Field(DEFAULT_MODERATION_MODEL, min_length=1, max_length=256)
    stream: None = None


# Documented parameters of each API that the sidecar forwards without reading. Keep in step
# with the providers' API references; a new one can be allowed meanwhile through
# `limits.allowed_extra_fields`.
_KNOWN: dict[str, frozenset[str]] = {
    "chat": frozenset(
        {
            "audio",
            "frequency_penalty",
            "function_call",
            "functions",
            "logit_bias",
            "logprobs",
            "metadata",
            "modalities",
            "parallel_tool_calls",
            "prediction",
            "presence_penalty",
            "prompt_cache_key",
            "prompt_cache_retention",
            "reasoning_effort",
            "response_format",
            "safety_identifier",
            "seed",
            "service_tier",
            "stop",
            "temperature",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "user",
            "verbosity",
            "web_search_options",
        }
    ),
    "completions": frozenset(
        {
            "best_of",
            "echo",
            "frequency_penalty",
            "logit_bias",
            "logprobs",
            "presence_penalty",
            "seed",
            "stop",
            "suffix",
            "temperature",
            "top_p",
            "user",
        }
    ),
    "embeddings": frozenset({"dimensions", "encoding_format", "user"}),
    "messages": frozenset(
        {
            "container",
            "context_management",
            "mcp_servers",
            "metadata",
            "service_tier",
            "stop_sequences",
            "temperature",
            "thinking",
            "tool_choice",
            "tools",
            "top_k",
            "top_p",
        }
    ),
    "responses": frozenset(
        {
            "conversation",
            "include",
            "max_tool_calls",
            "metadata",
            "parallel_tool_calls",
            "prompt",
            "prompt_cache_key",
            "prompt_cache_retention",
            "reasoning",
            "safety_identifier",
            "service_tier",
            "stream_options",
            "temperature",
            "text",
            "tool_choice",
            "tools",
            "top_logprobs",
            "top_p",
            "truncation",
            "user",
        }
    ),
    "messages.count_tokens": frozenset(
        {"context_management", "mcp_servers", "thinking", "tool_choice", "tools"}
    ),
    "moderations": frozenset(),
}

_MODELS: dict[str, type[_Body]] = {
    "chat": ChatCompletionBody,
    "completions": CompletionBody,
    "embeddings": EmbeddingBody,
    "messages": MessagesBody,
    "messages.count_tokens": CountTokensBody,
    "moderations": ModerationBody,
    "responses": ResponseBody,
}

Body = (
    ChatCompletionBody
    | CompletionBody
    | EmbeddingBody
    | MessagesBody
    | CountTokensBody
    | ModerationBody
    | ResponseBody
)

_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True if brackets nest deeper than ``limit`` outside strings. No parsing, no recursion:
    a body that cannot nest that deep (too few brackets) costs two ``count`` calls."""
    if data.count(b"{") + data.count(b"[") <= limit:
        return False
    depth = 0
    in_string = False
    skip_to = -1
    for match in _STRUCTURE.finditer(data):
        position = match.start()
        if position < skip_to:
            continue  # the character escaped by a backslash
        char = data[position]
        if in_string:
            if char == 0x5C:  # backslash
                skip_to = position + 2
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                return True
        elif char in (0x7D, 0x5D):
            depth -= 1
    return False


class _Ambiguous(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Ambiguous(f"duplicate key {key[:64]!r}")
            seen.add(key)
    return document


def _no_constant(name: str) -> Any:
    raise _Ambiguous(f"{name} is not JSON")


def refuse_ambiguous_json(data: bytes) -> None:
    """Refuse what JSON parsers disagree on, before anything is forwarded.

    RFC 8259 has no NaN or Infinity, and leaves duplicate keys to the parser: one takes the
    first ``"model"``, another the last. The sidecar decides on what it parsed and forwards
    the bytes, so a body two parsers could read differently is refused (RFC 7493, I-JSON).
    Malformed JSON is left to the model's parser, which names the problem.
    """
    try:
        json.loads(data, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except _Ambiguous as exc:
        raise errors.InvalidRequest(f"request body is ambiguous JSON: {exc}") from None
    except ValueError:
        return


def parse(
    endpoint: endpoints.Endpoint,
    data: bytes,
    *,
    max_depth: int,
    allowed_extra: Collection[str] = (),
) -> Body:
    """Validate a request body for ``endpoint``; raise InvalidRequest/UnknownField."""
    if json_depth_exceeds(data, max_depth):
        raise errors.InvalidRequest(f"request body nests deeper than {max_depth} levels")
    refuse_ambiguous_json(data)
    model = _MODELS[endpoint.action]
    try:
        body = model.model_validate_json(data)
    except ValidationError as exc:
        raise _invalid(exc) from None
    extra = body.model_extra
    if extra:
        known = _KNOWN[endpoint.action]
        for name in extra:
            if name not in known and name not in allowed_extra:
                raise errors.UnknownField(
                    f"unknown field {name!r}: not a parameter of {endpoint.path} and not in "
                    "limits.allowed_extra_fields",
                    param=name,
                )
    return body  # type: ignore[return-value]


def _invalid(exc: ValidationError) -> errors.InvalidRequest:
    first = exc.errors(include_url=False, include_input=False, include_context=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return errors.InvalidRequest("request body is not valid JSON")
    if kind == "model_type":
        return errors.InvalidRequest("request body must be a JSON object")
    where = ".".join(str(part) for part in first["loc"])
    message = "missing required field" if kind == "missing" else first["msg"]
    more = len(exc.errors()) - 1
    suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
    return errors.InvalidRequest(f"{where}: {message}{suffix}", param=where or None)
