"""A retention policy at the request: the provider may keep nothing of the caller's requests.

Refuse or rewrite? Both, by what the request says. A Responses request that leaves ``store``
out did not ask for storage (it gets the provider's default): it is sent with
``store: false`` and the app is answered as usual, the answer's ``store: false`` saying what
happened. A request that asks for storage (``store: true``, or ``background: true``, which
needs it) is refused: silently not storing, or answering a background request in the
foreground, would break what the app was written to expect without telling it.
"""

from __future__ import annotations

import json
from typing import Any

from sidegate import errors
from sidegate.policy import rules
from sidegate.sidecar import payloads


class StoreForbidden(errors.RequestError):
    status = 403
    error_type = "permission_error"
    code = rules.STORE_FORBIDDEN


def enforce(payload: payloads.Body, data: bytes) -> tuple[payloads.Body, bytes]:
    """The payload and body to send for a caller whose provider storage is forbidden."""
    if isinstance(payload, payloads.ResponseBody):
        if payload.background:
            raise StoreForbidden(
                "background responses need provider storage, which a retention policy forbids "
                "for this caller",
                param="background",
            )
        if payload.store:
            raise StoreForbidden(
                "a retention policy forbids provider storage for this caller: send store: false",
                param="store",
            )
        if payload.store is None:
            document: dict[str, Any] = json.loads(data)
            document["store"] = False
            data = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
            payload = payload.model_copy(update={"store": False})
    elif isinstance(payload, payloads.ChatCompletionBody) and payload.store:
        raise StoreForbidden(
            "a retention policy forbids provider storage for this caller: leave store out",
            param="store",
        )
    return payload, data
