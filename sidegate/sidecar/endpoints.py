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
