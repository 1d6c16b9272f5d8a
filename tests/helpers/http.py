"""Raw HTTP to the sidecar, for what an SDK would never send."""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import urlsplit


def call(
    url: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], Any]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        sent = {"content-type": "application/json", **(headers or {})}
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        data = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    try:
        parsed: Any = json.loads(data)
    except ValueError:
        parsed = data.decode("utf-8", "replace")
    return response.status, answer_headers, parsed


def chat_body(**fields: Any) -> bytes:
    document = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(document).encode()
