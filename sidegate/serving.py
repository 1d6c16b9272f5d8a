"""Serving an aiohttp application the way a careful proxy does, and stopping it gracefully.

aiohttp's server is lenient where a proxy in front of secrets must not be. What this adds,
at the connection level (below the application and its middlewares):

* a header timeout: a connection that has started a request must finish its line and
  headers within ``header_timeout`` seconds (nginx's ``client_header_timeout``), and an
  idle keep-alive connection is closed after ``keepalive_timeout``;
* a cap on open connections: past it a new connection gets one 503 and is closed;
* every parser-level refusal (malformed request line or header, a line too long, HTTP/0.9
  or a version other than 1.0 and 1.1)
  answered in the API's JSON error shape, without echoing any of the input (aiohttp's own
  answer quotes the offending line, which may hold an Authorization header) and logged as
  one line without a traceback;
* no ``Server`` header naming Python's and aiohttp's versions;
* an access log of method, path (never the query string: ``?api-key=`` is a thing),
  status, size and time.

The sidecar's API and metrics listeners and the operator's metrics listener are served
this way. The sidecar's shutdown after SIGTERM (``sidecar/draining.py``, ``drain``) stops
a runner started here.

The subclasses reach into aiohttp's ``RequestHandler`` (3.14: ``_messages``, ``_waiter``,
``_request_in_progress``); the integration tests drive each behaviour over raw sockets, so an
aiohttp upgrade that moves them fails loudly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
from collections.abc import Sequence
from typing import Any

from aiohttp import http_exceptions, http_parser, web, web_protocol
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_protocol import RequestHandler

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("sidegate.access")


@dataclasses.dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_header_bytes: int = 8190
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 1024


def _error_body(status: int, message: str, code: str) -> bytes:
    error_type = "api_error" if status >= 500 else "invalid_request_error"
    document = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return json.dumps(document).encode()


class _Response(web.Response):
    """A response written by the connection layer, with no ``Server`` header either."""

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        self.headers.popall("Server", None)


def _refusal(status: int, message: str, code: str) -> web.Response:
    response = _Response(
        status=status, body=_error_body(status, message, code), content_type="application/json"
    )
    response.force_close()
    return response


# What the parser's refusals say, by aiohttp's exception class: never the input itself.
_PARSER_REFUSALS: tuple[tuple[type[BaseException], int, str, str], ...] = (
    (http_exceptions.LineTooLong, 431, "request line or a header is too long", "header_too_long"),
    (http_exceptions.BadHttpMethod, 400, "not an HTTP request method", "malformed_request"),
    (http_exceptions.BadStatusLine, 400, "malformed HTTP request line", "malformed_request"),
    (http_exceptions.InvalidHeader, 400, "malformed HTTP header", "malformed_request"),
)


class _HTTP09(http_exceptions.BadHttpMessage):
    """A request line without an HTTP version: HTTP/0.9, which has no headers at all."""


class _OtherVersion(http_exceptions.BadHttpMessage):
    """An HTTP/1 message that claims another version (``HTTP/2.0``): the parser frames it
    as HTTP/1.1; RFC 9110 §15.6.6 answers a major version the server does not speak 505."""


_SPOKEN = ((1, 0), (1, 1))


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a header timeout, a connection cap and JSON
    refusals."""

    __slots__ = ("_header_deadline", "_header_timer", "_limits")

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        # One timer per connection, moved rather than re-made for every request on a
        # keep-alive connection (as aiohttp does for its keep-alive timer): the deadline is
        # what counts, the timer only wakes up to look at it.
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_deadline: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        manager = self._manager
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            logger.warning("connection refused: too many open connections")
            body = _error_body(503, "too many open connections; retry shortly", "overloaded")
            self._send_and_close(503, "Service Unavailable", body, {"Retry-After": "1"})

    def data_received(self, data: bytes) -> None:
        waiting = not self._request_in_progress and not self._messages
        super().data_received(data)
        if self._messages:
            self._header_deadline = None
            self._refuse_versions()
        elif waiting and self._header_deadline is None and not self._force_close:
            # The first bytes of a request: its line and headers are due within the timeout.
            self._header_deadline = self._loop.time() + self._limits.header_timeout
            if self._header_timer is None:
                self._header_timer = self._loop.call_at(self._header_deadline, self._header_check)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _header_check(self) -> None:
        self._header_timer = None
        deadline = self._header_deadline
        if deadline is None or self.transport is None:
            return  # the headers came; the next request arms the timer again
        if self._loop.time() < deadline:  # a later request's deadline: look again then
            self._header_timer = self._loop.call_at(deadline, self._header_check)
            return
        if self._request_in_progress or self._messages:
            return
        logger.warning("connection closed: request headers not received in time")
        body = _error_body(408, "request headers not received in time", "header_timeout")
        self._send_and_close(408, "Request Timeout", body, {})

    def _send_and_close(self, status: int, reason: str, body: bytes, extra: dict[str, str]) -> None:
        """Answer outside any request (nothing was parsed), then close."""
        if self.transport is not None:
            headers = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
            self.transport.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{headers}Connection: close\r\n\r\n".encode()
                + body
            )
        self.force_close()

    def _refuse_versions(self) -> None:
        for position, (message, payload) in enumerate(self._messages):
            if isinstance(message, http_parser.RawRequestMessage) and message.version not in (
                _SPOKEN
            ):
                exc = _HTTP09("HTTP/0.9") if message.version < (1, 0) else _OtherVersion("")
                refusal = web_protocol._ErrInfo(status=505, exc=exc, message=type(exc).__name__)
                self._messages[position] = (refusal, payload)

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        """aiohttp logs a traceback when the body it discards after an answer (its lingering
        read) turns out malformed: broken chunking, a Content-Encoding that does not decode.
        That is the client's fault, already answered: one line, like any parser refusal."""
        exc = kwargs.get("exc_info")
        if isinstance(exc, web_protocol.RequestPayloadError | http_exceptions.HttpProcessingError):
            logger.warning("malformed request body discarded", extra={"error": type(exc).__name__})
            return
        super().log_exception(*args, **kwargs)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to what never reached the application: JSON, no echo, one line."""
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        if isinstance(exc, _HTTP09 | _OtherVersion):
            logger.warning("request refused: HTTP version", extra={"error": type(exc).__name__})
            return _refusal(505, "HTTP/1.0 or HTTP/1.1 is required", "http_version_not_supported")
        if status >= 500:
            logger.error("request failed", extra={"error": type(exc).__name__ if exc else None})
            return _refusal(status, "internal error", "internal_error")
        refusal_status, text, code = next(
            ((s, t, c) for kind, s, t, c in _PARSER_REFUSALS if isinstance(exc, kind)),
            (status, "malformed HTTP request", "malformed_request"),
        )
        logger.warning("malformed request refused", extra={"error": type(exc).__name__})
        return _refusal(refusal_status, text, code)


class GuardedServer(web.Server):
    def __init__(self, *args: Any, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, loop=self._loop, limits=self._limits, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a ``GuardedServer``."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            limits=self._limits,
            **self._kwargs,
        )


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without the query, status, bytes, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            "%s %s %s",
            request.method,
            request.path,
            response.status,
            extra={
                "bytes": response.body_length,
                "ms": round(time * 1000, 3),
                "request_id": response.headers.get("x-request-id"),
            },
        )


async def start(
    app: web.Application,
    host: str,
    port: int,
    *,
    limits: ConnectionLimits | None = None,
    access_log: bool = False,
    backlog: int = 128,
) -> web.AppRunner:
    """Start serving ``app``; the caller owns the runner and calls ``runner.cleanup()``
    (or ``drain``)."""
    limits = limits or ConnectionLimits()
    runner = GuardedRunner(
        app,
        limits=limits,
        access_log=access_logger if access_log else None,
        access_log_class=AccessLogger,
        max_line_size=limits.max_header_bytes,
        max_field_size=limits.max_header_bytes,
        keepalive_timeout=limits.keepalive_timeout,
        # By the time cleanup runs, ``drain`` has waited its grace and cut what was left:
        # this only bounds connections that ignore the cut. aiohttp applies it twice.
        shutdown_timeout=1.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=backlog)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port actually bound (useful with port 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise RuntimeError("runner is not listening on a TCP port")


async def wait_for_signal(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
