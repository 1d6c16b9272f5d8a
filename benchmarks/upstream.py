"""A deliberately minimal, fast upstream for the overhead benchmark.

An asyncio protocol (uvloop) answering every POST with a fixed OpenAI-style chat completion
(~400 bytes), or a short SSE stream when the body asks for one; on /v1/responses, the
Responses API's answer and typed event stream instead. No framework, so the
upstream is never the bottleneck. Usage: python benchmarks/upstream.py PORT
"""

from __future__ import annotations

import asyncio
import json
import re
import sys

import uvloop

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Benchmark answer: " + "lorem ipsum " * 12,
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
    }
).encode()
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(COMPLETION)).encode()
    + b"\r\n\r\n"
    + COMPLETION
)


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


_EVENTS = [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"w%d "}}],"usage":null}\n\n'
    % i
    for i in range(10)
] + [
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":10}}\n\n',
    b"data: [DONE]\n\n",
]
STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(_chunk(e) for e in _EVENTS)
    + b"0\r\n\r\n"
)
_RESPONSE_OBJECT = {
    "id": "resp_bench",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "model": "bench-model",
    "output": [
        {
            "type": "message",
            "id": "msg_bench",
            "status": "completed",
            "role": "assistant",
            "content": [
                {"type": "output_text", "text": "Benchmark answer: " + "lorem ipsum " * 12}
            ],
        }
    ],
    "store": True,
    "usage": {"input_tokens": 12, "output_tokens": 30, "total_tokens": 42},
}
_RESPONSE_BODY = json.dumps(_RESPONSE_OBJECT).encode()
RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_RESPONSE_BODY)).encode()
    + b"\r\n\r\n"
    + _RESPONSE_BODY
)


def _typed(kind: str, **fields: object) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


_STARTED = {**_RESPONSE_OBJECT, "status": "in_progress", "output": [], "usage": None}
_RESPONSE_EVENTS = [
    _typed("response.created", response=_STARTED),
    *(_typed("response.output_text.delta", item_id="msg_bench", delta=f"w{i} ") for i in range(10)),
    _typed("response.completed", response=_RESPONSE_OBJECT),
]
RESPONSES_STREAM = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(_chunk(e) for e in _RESPONSE_EVENTS)
    + b"0\r\n\r\n"
)
_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _LENGTH.search(self.buffer, 0, end + 2)
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            responses = b"/responses " in self.buffer[: self.buffer.find(b"\r\n")]
            self.buffer = self.buffer[end + 4 + length :]
            streamed = b'"stream":true' in body.replace(b" ", b"")
            if responses:
                answer = RESPONSES_STREAM if streamed else RESPONSES
            else:
                answer = STREAM if streamed else RESPONSE
            self.transport.write(answer)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        Upstream, "127.0.0.1", port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
