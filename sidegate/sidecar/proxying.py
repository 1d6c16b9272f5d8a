"""One call to a provider: build the upstream request, send it, relay the answer.

The request body goes upstream as the bytes the client sent unless something must change
(a renamed model, or the sidecar asking OpenAI for usage in a stream); only then is it
re-encoded. Streams are relayed event by event as they arrive, never buffered whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict, CIMultiDictProxy

from sidegate import errors
from sidegate.redact import Redactor, Secret
from sidegate.sidecar import budgeting, draining, endpoints, payloads, providers, routing, usage
from sidegate.sidecar.credentials import Credential
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

# Never copied from a provider's answer: hop-by-hop headers (RFC 9110 §7.6.1), headers the
# sidecar sets itself, and cookies (the provider's CDN cookies are not the app's business).
_DROP_FROM_RESPONSE = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "set-cookie",
        "date",
        "server",
        "x-request-id",
        "alt-svc",
    }
)
# Client headers that reach a provider. An allow-list: auth headers, cookies, hop-by-hop and
# anything unknown stay behind.
_FORWARD_FROM_CLIENT: dict[endpoints.Dialect, tuple[str, ...]] = {
    "openai": ("accept", "user-agent", "openai-beta"),
    "anthropic": ("accept", "user-agent", "anthropic-version", "anthropic-beta"),
}
_ERROR_BODY_LIMIT = 64 * 1024
# How often a provider body being read is checked for a parser failure (FramingWatch).
_BODY_POLL_SECONDS = 0.25


@dataclasses.dataclass(slots=True)
class Outcome:
    """What a forwarded call produced, for metrics now and audit later."""

    status: int = 0
    usage: usage.Usage = dataclasses.field(default_factory=usage.Usage)
    upstream_seconds: float = 0.0
    error_code: str | None = None  # why a stream that had started ended in an error
    # Acknowledged audit: awaited before a stream's last event and its end are written.
    before_end: Callable[[], Awaitable[None]] | None = None
    # A Responses API answer the provider stores: awaited with its id before the client
    # sees the id (so the creator is on record before it can use it).
    on_response_id: Callable[[str], Awaitable[None]] | None = None


# The event that ends a stream (OpenAI's [DONE], Anthropic's message_stop, the Responses API's
# response.completed/failed/incomplete): held back until ``before_end`` returns, so no client
# sees a complete answer before its audit event is on disk.
_LAST_EVENT = re.compile(
    rb"^(?:data: ?\[DONE\]|event: ?(?:message_stop|response\.(?:completed|failed|incomplete))"
    rb"[\r\n])"
)


def upstream_body(
    endpoint: endpoints.Endpoint, data: bytes, payload: payloads.Body, target: routing.Target
) -> tuple[bytes, bool]:
    """The body to send, and whether the sidecar added ``include_usage`` (to hide its chunk)."""
    rename = target.upstream_model is not None and target.upstream_model != payload.model
    ask_usage = (
        endpoint.dialect == "openai"
        and payload.streaming
        and isinstance(payload, (payloads.ChatCompletionBody, payloads.CompletionBody))
        and not (payload.stream_options and payload.stream_options.include_usage)
    )
    if not rename and not ask_usage:
        return data, False
    document: dict[str, Any] = json.loads(data)
    if rename:
        document["model"] = target.upstream_model
    if ask_usage:
        options = document.get("stream_options") or {}
        document["stream_options"] = {**options, "include_usage": True}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode(), ask_usage


def request_headers(
    client: Mapping[str, str],
    upstream: providers.Upstream,
    key: Secret,
    extra_forward: Iterable[str],
) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    for name in (*_FORWARD_FROM_CLIENT[upstream.dialect], *extra_forward):
        value = client.get(name)
        if value is not None:
            headers[name] = value
    if upstream.anthropic_version and "anthropic-version" not in headers:
        headers["anthropic-version"] = upstream.anthropic_version
    headers.update(upstream.static_headers)
    headers.update(upstream.auth_headers(key))
    return headers


def response_headers(
    upstream: CIMultiDictProxy[str], scrub: Callable[[str], str] = lambda value: value
) -> CIMultiDict[str]:
    """The provider's headers the app may see, each value through ``scrub``: a provider
    that quotes the key it got (a debug header, a WWW-Authenticate on a 401) does it in
    headers as readily as in bodies."""
    # Headers the provider names in its own Connection header are hop-by-hop too.
    dropped = set(_DROP_FROM_RESPONSE)
    for token in upstream.get("connection", "").split(","):
        dropped.add(token.strip().lower())
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in dropped:
            headers.add(name, scrub(value))
    upstream_id = upstream.get("x-request-id")
    if upstream_id:
        headers["x-upstream-request-id"] = scrub(upstream_id)
    return headers


class Proxy:
    """Sends requests to providers over one pooled client session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        redactor: Redactor,
        metrics: Metrics,
        *,
        max_response_bytes: int,
        max_event_bytes: int,
        in_flight: draining.InFlight,
        budget: budgeting.MemoryBudget,
        forward_headers: Collection[str] = (),
    ) -> None:
        self._max_event_bytes = max_event_bytes
        self._in_flight = in_flight
        self._budget = budget
        self._session = session
        self._redactor = redactor
        self._metrics = metrics
        self._max_response_bytes = max_response_bytes
        self._forward_headers = tuple(forward_headers)

    async def forward(
        self,
        request: web.Request,
        upstream: providers.Upstream,
        endpoint: endpoints.Endpoint,
        data: bytes,
        payload: payloads.Body,
        target: routing.Target,
        credential: Credential,
        outcome: Outcome,
        charges: budgeting.Charges,
    ) -> web.StreamResponse:
        body, hide_usage_chunk = upstream_body(endpoint, data, payload, target)
        url = upstream.url(endpoint, target.upstream_model or payload.model)
        answer = await self._call(request, upstream, "POST", url, body, credential, outcome)
        try:
            if answer.status < 400 and answer.content_type == "text/event-stream":
                return await self._relay_stream(
                    request, upstream, endpoint, answer, outcome, hide_usage_chunk
                )
            return await self._relay_whole(upstream, endpoint.dialect, answer, outcome, charges)
        finally:
            answer.release()

    async def forward_stored(
        self,
        request: web.Request,
        upstream: providers.Upstream,
        operation: endpoints.StoredOperation,
        response_id: str,
        credential: Credential,
        outcome: Outcome,
        charges: budgeting.Charges,
    ) -> web.StreamResponse:
        """An operation on a stored response: no body, the known query parameters, the
        answer relayed whole and not metered (the tokens were counted when it was made)."""
        url = f"{upstream.base_url}/responses/{quote(response_id, safe='')}{operation.suffix}"
        query = [(k, v) for k, v in request.query.items() if k in operation.query]
        if query:
            url += "?" + urlencode(query)
        answer = await self._call(
            request, upstream, operation.method, url, None, credential, outcome
        )
        try:
            return await self._relay_whole(upstream, None, answer, outcome, charges)
        finally:
            answer.release()

    async def _call(
        self,
        request: web.Request,
        upstream: providers.Upstream,
        method: str,
        url: str,
        body: bytes | None,
        credential: Credential,
        outcome: Outcome,
    ) -> aiohttp.ClientResponse:
        started = time.perf_counter()
        answer = await self._send(request, upstream, method, url, body, credential.current)
        if answer.status == 401 and credential.previous is not None:
            # Rotation overlap: the kubelet may not have brought us the new key yet, or the
            # provider may not have activated it. One retry with the previous key.
            answer.release()
            self._metrics.auth_retries.labels(upstream.name).inc()
            answer = await self._send(request, upstream, method, url, body, credential.previous)
        outcome.upstream_seconds = time.perf_counter() - started
        refusal = unrelayable(answer.status, upstream.name)
        if refusal is not None:
            answer.release()
            raise refusal
        outcome.status = answer.status
        return answer

    async def _send(
        self,
        request: web.Request,
        upstream: providers.Upstream,
        method: str,
        url: str,
        body: bytes | None,
        key: Secret,
    ) -> aiohttp.ClientResponse:
        headers = request_headers(request.headers, upstream, key, self._forward_headers)
        try:
            return await self._session.request(
                method,
                url,
                data=body,
                headers=headers,
                ssl=upstream.ssl_context if upstream.ssl_context is not None else False,
                timeout=upstream.timeout,
                allow_redirects=False,
            )
        except Exception as exc:
            error = translate(exc, upstream.name)
            if error is None:
                raise
            raise error from None

    async def _relay_whole(
        self,
        upstream: providers.Upstream,
        dialect: endpoints.Dialect | None,  # None: not metered
        answer: aiohttp.ClientResponse,
        outcome: Outcome,
        charges: budgeting.Charges,
    ) -> web.Response:
        limit = self._max_response_bytes if answer.status < 400 else _ERROR_BODY_LIMIT
        declared = answer.content_length
        if declared is not None and declared > limit and answer.status < 400:
            raise errors.UpstreamError(f"provider {upstream.name} answered more than {limit} bytes")
        chunks: list[bytes] = []
        size = charged = 0
        if declared is not None:  # admitted before it is read
            self._budget.charge(charges, min(declared, limit))
            charged = min(declared, limit)
        try:
            with FramingWatch(answer) as body:
                async for chunk in body:
                    size += len(chunk)
                    if size > limit:
                        break
                    if size > charged:  # chunked, or decompressed beyond its Content-Length
                        self._budget.charge(charges, size - charged)
                        charged = size
                    chunks.append(chunk)
        except Exception as exc:
            error = translate(exc, upstream.name)
            if error is None:
                raise
            raise error from None
        data = b"".join(chunks)
        del chunks
        if size > limit:
            if answer.status >= 400:
                data = data[:limit]
            else:
                raise errors.UpstreamError(
                    f"provider {upstream.name} answered more than {limit} bytes"
                )
        headers = response_headers(answer.headers, self._redactor.scrub)
        if answer.status >= 400:
            # Providers echo parts of a rejected key in 401 bodies; nothing key-shaped or
            # known to us leaves in an error body.
            data = self._redactor.scrub_bytes(data)
            logger.warning(
                "provider answered an error",
                extra={"provider": upstream.name, "status": answer.status},
            )
        else:
            if dialect is not None:
                outcome.usage = usage.from_body(dialect, data)
            if outcome.on_response_id is not None:
                await outcome.on_response_id(_response_id(data, upstream.name))
        return web.Response(status=answer.status, body=data, headers=headers)

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: providers.Upstream,
        endpoint: endpoints.Endpoint,
        answer: aiohttp.ClientResponse,
        outcome: Outcome,
        hide_usage_chunk: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=answer.status, headers=response_headers(answer.headers, self._redactor.scrub)
        )
        await response.prepare(request)
        splitter = usage.EventSplitter(self._max_event_bytes)
        meter = usage.StreamMeter(upstream.dialect, hide_usage_chunk=hide_usage_chunk)
        # The meter fills this in place as events go by: what was used until then is settled
        # and audited, and the audit event written before the last event (acknowledged
        # durability) already has the usage the last events reported.
        outcome.usage = meter.usage
        failure: errors.RequestError | None = None
        held = b""  # the last event, while the audit event is not yet durable
        try:
            with FramingWatch(answer) as body:
                async for chunk in body:
                    kept = [event for event in splitter.feed(chunk) if meter.keep(event)]
                    if outcome.on_response_id is not None and meter.response_id is not None:
                        record, outcome.on_response_id = outcome.on_response_id, None
                        await record(meter.response_id)  # before the client sees the id
                    if held and kept:
                        kept.insert(0, held)
                        held = b""
                    if outcome.before_end is not None and kept and _LAST_EVENT.match(kept[-1]):
                        held = kept.pop()
                    if kept:
                        await response.write(kept[0] if len(kept) == 1 else b"".join(kept))
            rest = splitter.rest()
            if rest and meter.keep(rest):
                held += rest
            if not meter.finished:
                failure = errors.UpstreamError(
                    f"provider {upstream.name} ended the stream before its last event",
                    code="upstream_stream_cut",
                )
            elif outcome.before_end is not None:
                await outcome.before_end()  # raises ConnectionResetError if not recorded
        except errors.RequestError as exc:  # the response's creator could not be recorded
            failure = exc
        except ConnectionResetError:
            # First: aiohttp's ClientConnectionResetError is also a ClientError, and a client
            # that hung up is not a provider failure.
            logger.info("client went away mid-stream", extra={"provider": upstream.name})
            outcome.status = 499
            return response
        except usage.EventTooLarge as exc:
            failure = errors.UpstreamError(
                f"provider {upstream.name} sent a stream event over the limit: {exc}",
                code="upstream_event_too_large",
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = errors.UpstreamError(
                f"provider {upstream.name} stream broke off", code="upstream_stream_broken"
            )
            if isinstance(exc, TimeoutError):
                failure = errors.UpstreamTimeout(
                    f"provider {upstream.name} stopped sending for longer than the read timeout"
                )
        except asyncio.CancelledError:
            if not self._in_flight.cutting:
                raise  # the client went away: aiohttp cancels the handler
            # The sidecar's own cut at the end of its shutdown grace: answered, not raised.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            failure = errors.ShuttingDown("the sidecar is shutting down; the stream was cut")
        except Exception:
            # The status line is gone: answering the error as a response of its own would
            # write a second HTTP response into this body. Ended as a failed stream instead.
            logger.exception(
                "unexpected error mid-stream",
                extra={
                    "request_id": response.headers.get("x-request-id", "-"),
                    "provider": upstream.name,
                },
            )
            failure = errors.InternalError()
        if failure is None:
            await finish_stream(request, response, held)
        else:
            await self._fail_stream(request, response, upstream, endpoint, outcome, failure)
        return response

    async def _fail_stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: providers.Upstream,
        endpoint: endpoints.Endpoint,
        outcome: Outcome,
        error: errors.RequestError,
    ) -> None:
        """The status line is gone already: end the stream with an error event in its own
        dialect and no terminating chunk, so every client sees the failure."""
        request_id = response.headers.get("x-request-id", "-")
        logger.warning(
            "stream ended with an error",
            extra={
                "request_id": request_id,
                "provider": upstream.name,
                "code": error.code,
                "reason": error.message,
            },
        )
        outcome.status, outcome.error_code = error.status, error.code
        event = error_event(
            upstream.dialect, error, request_id, typed=endpoint is endpoints.RESPONSES
        )
        await finish_stream(request, response, event, complete=False)


def _response_id(data: bytes, provider: str) -> str:
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested past the decoder's stack
        document = None
    found = document.get("id") if isinstance(document, dict) else None
    if not isinstance(found, str) or not found:
        raise errors.UpstreamError(f"provider {provider} answered a response without an id")
    return found


def error_event(
    dialect: endpoints.Dialect, error: errors.RequestError, request_id: str, *, typed: bool = False
) -> bytes:
    """An SSE error event the official SDKs raise on: OpenAI reads a `data:` object with an
    `error` key, Anthropic an `event: error`.

    ``typed``: a Responses API stream, whose events are named. Its own error event
    (`event: error`, with type, code and message at the top) is what an events-minded client
    reads; the `error` object alongside is what makes the openai SDK raise."""
    message = f"{error.message} (request id {request_id})"
    document: dict[str, Any]
    if typed:
        detail = {"message": message, "type": error.error_type, "param": None, "code": error.code}
        document = {"type": "error", "code": error.code, "message": message, "param": None}
        document["error"] = detail
        return b"event: error\ndata: " + json.dumps(document).encode() + b"\n\n"
    if dialect == "anthropic":
        document = {
            "type": "error",
            "error": {"type": error.error_type, "message": message},
        }
        return b"event: error\ndata: " + json.dumps(document).encode() + b"\n\n"
    document = {
        "error": {"message": message, "type": error.error_type, "param": None, "code": error.code}
    }
    return b"data: " + json.dumps(document).encode() + b"\n\n"


# A client that stopped reading must not hold a stream's end (or a shutdown) up for long.
_FINAL_WRITE_SECONDS = 2.0


async def finish_stream(
    request: web.Request,
    response: web.StreamResponse,
    last: bytes = b"",
    *,
    complete: bool = True,
) -> None:
    """Write a stream's last bytes. Every streamed answer ends here, cleanly or not.

    ``complete``: the terminating chunk follows and the connection may be reused. Otherwise
    ``last`` (an error event) is written and the connection closed without the terminating
    chunk: an HTTP client sees an incomplete body even if it ignores the event.
    """
    try:
        async with asyncio.timeout(_FINAL_WRITE_SECONDS):
            if complete:
                await response.write_eof(last)
                return
            await response.write(last)
    except (ConnectionError, TimeoutError):
        pass
    response.force_close()
    if request.transport is not None:
        request.transport.close()  # flushes what is buffered, then closes: no 0-chunk


def unrelayable(status: int, provider: str) -> errors.UpstreamError | None:
    """A provider status the app must not be handed as it is; None for the rest.

    A redirect is not followed (the key would go to wherever it points), and not relayed
    either: the app's SDK follows redirects, so it would send the prompt to that host past
    the gateway's policy and audit. A status outside 200-599 is not HTTP any client expects.
    """
    if 300 <= status < 400:
        return errors.UpstreamError(
            f"provider {provider} answered a redirect ({status}); redirects are not followed",
            code="upstream_redirect",
        )
    if not 200 <= status < 600:
        return errors.UpstreamError(
            f"provider {provider} answered an invalid status ({status})",
            code="upstream_bad_status",
        )
    return None


class FramingWatch:
    """A provider's body, read chunk by chunk (``async for chunk in watch``), whose broken
    framing is an error on the body.

    When a provider breaks the chunked framing (a chunk-size line that is not hex), aiohttp
    puts its parser's error on the connection, not on the body, and stops the read timeout:
    a reader of the body then waits for ever, or meets a RuntimeError once the connection is
    gone. While in force (``with``), this asks the connection every ``_BODY_POLL_SECONDS``
    whether its parser failed and, once the bytes that parsed before the failure have all been
    read (they are relayed first), puts a ClientPayloadError on the body, waking its reader,
    as any other broken body has; a RuntimeError met meanwhile becomes that error on the way
    out. A timer per body, not a bound on every read: reads cost what aiohttp's cost."""

    def __init__(self, answer: aiohttp.ClientResponse) -> None:
        self._answer = answer
        self._content = answer.content
        self._read = 0  # bytes handed out; the body's total_bytes counts those it was fed
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> FramingWatch:
        self._schedule()
        return self

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        failure = _framing_failure(self._answer)
        if isinstance(exc, RuntimeError) and failure is not None:  # "Connection closed."
            raise _broken_framing(failure) from failure

    def __aiter__(self) -> FramingWatch:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._content.readany()
        if not chunk:
            raise StopAsyncIteration
        self._read += len(chunk)
        return chunk

    def _schedule(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(_BODY_POLL_SECONDS, self._check)

    def _check(self) -> None:
        failure = _framing_failure(self._answer)
        if failure is None or self._content.total_bytes > self._read:
            self._schedule()  # no failure, or parsed bytes still to be read: they go first
        elif self._content.exception() is None:
            self._content.set_exception(_broken_framing(failure))


def _framing_failure(answer: aiohttp.ClientResponse) -> HttpProcessingError | None:
    connection = answer.connection
    protocol = connection.protocol if connection is not None else None
    failure = protocol.exception() if protocol is not None else None
    return failure if isinstance(failure, HttpProcessingError) else None


def _broken_framing(failure: HttpProcessingError) -> aiohttp.ClientPayloadError:
    error = aiohttp.ClientPayloadError("the provider's response framing broke")
    error.__cause__ = failure
    return error


def translate(exc: BaseException, provider: str) -> errors.UpstreamError | None:
    """Map client-side failures to our errors, with messages safe to show; None for
    anything that is not a failure to talk to the provider."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return errors.UpstreamTimeout(f"provider {provider} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return errors.UpstreamError(
            f"provider {provider}: TLS certificate verification failed", code="upstream_tls"
        )
    if isinstance(exc, aiohttp.ClientSSLError) or (
        isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, ssl.SSLError)
    ):
        return errors.UpstreamError(
            f"provider {provider}: TLS handshake failed (version or cipher refused)",
            code="upstream_tls",
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        return errors.UpstreamError(f"provider {provider} could not be reached")
    if isinstance(exc, aiohttp.ClientError):
        return errors.UpstreamError(f"provider {provider} connection failed")
    return None
