"""The API surface the sidecar serves, one ``Endpoint`` per proxied route.

Which dialect a route speaks (OpenAI or Anthropic) decides the error shape, the providers
that may serve it, and how token usage is read from the answer.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Dialect = Literal["openai", "anthropic"]


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    action: str  # stable name used in metrics, audit and policy ("chat", "embeddings", ...)
    path: str  # path under the sidecar's /v1 and under an OpenAI-style base URL
    dialect: Dialect
    streams: bool  # whether `stream: true` is meaningful here
    # Whether the request spends model tokens: token budgets reserve and settle for it.
    # Token counting and moderation are free at the providers; they count as requests only.
    spends_tokens: bool = True


CHAT = Endpoint("chat", "/chat/completions", "openai", streams=True)
COMPLETIONS = Endpoint("completions", "/completions", "openai", streams=True)
EMBEDDINGS = Endpoint("embeddings", "/embeddings", "openai", streams=False)
MESSAGES = Endpoint("messages", "/messages", "anthropic", streams=True)
RESPONSES = Endpoint("responses", "/responses", "openai", streams=True)
COUNT_TOKENS = Endpoint(
    "messages.count_tokens",
    "/messages/count_tokens",
    "anthropic",
    streams=False,
    spends_tokens=False,
)
MODERATIONS = Endpoint("moderations", "/moderations", "openai", streams=False, spends_tokens=False)

ALL = (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, COUNT_TOKENS, MODERATIONS, RESPONSES)


@dataclasses.dataclass(frozen=True, slots=True)
class StoredOperation:
    """An operation on a response the provider stored: ``/v1/responses/{id}{suffix}``.
    Decided as the ``responses`` action on the model the response was created with."""

    action: str  # route name, metrics and audit label ("responses.retrieve", ...)
    method: str
    suffix: str
    query: frozenset[str]  # the query parameters the provider documents for it


RETRIEVE = StoredOperation("responses.retrieve", "GET", "", frozenset({"include", "include[]"}))
DELETE = StoredOperation("responses.delete", "DELETE", "", frozenset())
CANCEL = StoredOperation("responses.cancel", "POST", "/cancel", frozenset())
INPUT_ITEMS = StoredOperation(
    "responses.input_items",
    "GET",
    "/input_items",
    frozenset({"after", "before", "include", "include[]", "limit", "order"}),
)

STORED = (RETRIEVE, DELETE, CANCEL, INPUT_ITEMS)
