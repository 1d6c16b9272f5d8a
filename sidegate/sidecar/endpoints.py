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


CHAT = Endpoint("chat", "/chat/completions", "openai", streams=True)
COMPLETIONS = Endpoint("completions", "/completions", "openai", streams=True)
EMBEDDINGS = Endpoint("embeddings", "/embeddings", "openai", streams=False)
MESSAGES = Endpoint("messages", "/messages", "anthropic", streams=True)

ALL = (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES)
