"""The sidecar's aiohttp application: routes, middlewares and background tasks.

``create_app`` composes the pieces; ``Pipeline.handle`` is the request path, one stage per
line: read → validate → route → credential → forward. Everything a stage needs is built once
here and passed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import itertools
import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
from aiohttp import web

from sidegate import errors, scraping, tls
from sidegate.audit import exporting, signing, spool
from sidegate.audit.metrics import AuditMetrics
from sidegate.policy import models, rules
from sidegate.policy import signing as policy_signing
from sidegate.redact import Redactor
from sidegate.sidecar import (
    brokering,
    budgeting,
    credentials,
    draining,
    endpoints,
    hosts,
    limiting,
    ownership,
    payloads,
    policies,
    providers,
    proxying,
    retention,
    routing,
    settings,
    watching,
)
from sidegate.sidecar.metrics import Metrics

logger = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_RESPONSE_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def request_ids() -> Callable[[], str]:
    """Unique ids without a syscall per request: a random per-process prefix and a counter."""
    prefix = secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):016x}"


@dataclasses.dataclass(slots=True)
class RequestRecord:
    """What the middleware reports once the request is answered; stages fill it in."""

    request_id: str
    route: str
    provider: str = "-"
    model: str = "-"  # the route's configured pattern, never the raw client string
    outcome: proxying.Outcome = dataclasses.field(default_factory=proxying.Outcome)
    caller: rules.Caller | None = None
    decision: rules.Decision | None = None
    requested_model: str | None = None  # as the client sent it, scrubbed, for audit
    error_code: str | None = None
    started: float = 0.0  # perf_counter when the request arrived
    audited: bool = False  # its audit event is emitted (exactly once)
    charges: budgeting.Charges = dataclasses.field(default_factory=budgeting.Charges)


RECORD = web.RequestKey("sidegate.record", RequestRecord)


class AuditUnavailable(errors.RequestError):
    status = 503
    error_type = "api_error"
    code = "audit_unavailable"


class Pipeline:
    """The proxy path. One instance per app; holds what every request needs."""

    def __init__(
        self,
        config: settings.SidecarSettings,
        metrics: Metrics,
        redactor: Redactor,
        store: credentials.CredentialStore,
        policy: policies.PolicyHolder,
        limiter: limiting.Limiter,
        audit: spool.Spool | None,
        owners: ownership.Owners,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.redactor = redactor
        self.credentials = store
        self.policies = policy
        self.limiter = limiter
        self.audit = audit
        self.owners = owners
        identity = config.identity
        self._namespace, self._service_account = identity.namespace, identity.service_account
        # Stored responses belong to the service account, whatever tenant it claims.
        self._owner = f"{identity.namespace}/{identity.service_account}"
        self._tenant_header = identity.tenant_header
        self._default_output_tokens = config.rate_limits.default_output_tokens
        self.routes = routing.RouteTable(config.routes)
        self.upstreams = providers.build_all(config.providers)
        self._allowed_extra = frozenset(config.limits.allowed_extra_fields)
        self.proxy: proxying.Proxy | None = None  # set when the client session opens
        self.new_request_id = request_ids()
        self.budget = budgeting.MemoryBudget(config.limits.memory_budget_bytes, metrics)
        self.in_flight = draining.InFlight()
        self.hosts = hosts.allowed(config.listen)
        self._ca_digests: dict[str, str] = {}  # provider → sha256 of the CA file in force

    async def handle(
        self, endpoint: endpoints.Endpoint, request: web.Request
    ) -> web.StreamResponse:
        record = request[RECORD]
        if self.audit is not None and not self.audit.accepting:
            raise AuditUnavailable("the audit trail cannot be written; requests are refused")
        data = await read_body(
            request, self.budget, record.charges, self.config.listen.body_timeout_seconds
        )
        payload = payloads.parse(
            endpoint,
            data,
            max_depth=self.config.limits.max_json_depth,
            allowed_extra=self._allowed_extra,
        )
        if self.audit is not None:  # the client's own string: scrubbed before it is kept
            record.requested_model = self.redactor.scrub(payload.model)
        caller = record.caller = self.identify(request)
        decision = record.decision = self.policies.decide(caller, payload.model, endpoint.action)
        if not decision.allowed:
            self.metrics.child(self.metrics.denials, decision.reason).inc()
            # The reason code is the caller's own; which policy decided, and what other
            # callers may do, is for the admin explain API only.
            if decision.reason == rules.TENANT_NOT_ALLOWED:
                raise errors.PolicyDenied(
                    f"tenant {caller.tenant!r} is not one this caller may claim "
                    f"({decision.reason})",
                    param=self._tenant_header,
                    code=decision.reason,
                )
            raise errors.PolicyDenied(
                f"model {payload.model!r} is not allowed for this caller ({decision.reason})",
                param="model",
                code=decision.reason,
            )
        if decision.storage_forbidden_by is not None:
            try:
                payload, data = retention.enforce(payload, data)
            except retention.StoreForbidden:
                self.metrics.child(self.metrics.denials, rules.STORE_FORBIDDEN).inc()
                raise
        target = self.routes.resolve(payload.model)
        if target is None:
            raise errors.NotFound(
                f"model {payload.model!r} is not served by this gateway",
                param="model",
                code="model_not_found",
            )
        record.provider, record.model = target.provider, target.pattern
        upstream = self.upstreams[target.provider]
        if not upstream.serves(endpoint):
            raise errors.InvalidRequest(
                f"model {payload.model!r} is served by a provider that does not speak "
                f"/v1{endpoint.path}",
                param="model",
                code="wrong_api_for_model",
            )
        credential = self.credentials.get(target.provider)
        if credential is None:
            raise errors.NotReady(f"no credential loaded for provider {target.provider}")
        assert self.proxy is not None  # set by the client_session context
        if isinstance(payload, payloads.ResponseBody):
            await self._check_stored(payload, target, record.outcome)
        if self.acknowledged:  # a stream's last event waits for its audit event
            record.outcome.before_end = functools.partial(self._end_stream, request, record)
        outcome = record.outcome
        forward = functools.partial(
            self.proxy.forward,
            request,
            upstream,
            endpoint,
            data,
            payload,
            target,
            credential,
            outcome,
            record.charges,
        )
        budgets = limiting.budgets(caller, decision)
        if not budgets:
            return await forward()
        reservation = await self.limiter.acquire(
            budgets,
            estimate_tokens(data, payload, self._default_output_tokens)
            if endpoint.spends_tokens
            else 0,
            self.new_request_id(),  # the concurrency slot's id: never a client-chosen one
        )
        try:
            return await forward()
        finally:
            # Settle with what the provider reported; nothing if it was never reached; the
            # reservation as it stands if it answered without usage.
            used = (
                outcome.usage.total
                if outcome.usage.reported
                else (0 if not outcome.status or not endpoint.spends_tokens else None)
            )
            await self.limiter.settle(reservation, used)

    async def _check_stored(
        self, payload: payloads.ResponseBody, target: routing.Target, outcome: proxying.Outcome
    ) -> None:
        """Continue only your own stored responses; put what the provider will store on
        record as yours before you learn its id."""
        previous = payload.previous_response_id
        if previous is not None:
            binding = await self.owners.get(previous)
            if binding is None or binding.owner != self._owner:
                self.metrics.child(self.metrics.denials, ownership.NotOwned.code).inc()
                raise ownership.not_owned(previous)
        if payload.store is not False:  # the provider's default is to store
            binding = ownership.Binding(self._owner, target.provider, payload.model)
            outcome.on_response_id = functools.partial(self.owners.bind, binding=binding)

    async def handle_stored(
        self, operation: endpoints.StoredOperation, request: web.Request
    ) -> web.StreamResponse:
        """Retrieve, delete, cancel or list the input of a stored response: its creator only,
        decided as ``responses`` on the model it was created with."""
        record = request[RECORD]
        if self.audit is not None and not self.audit.accepting:
            raise AuditUnavailable("the audit trail cannot be written; requests are refused")
        response_id = request.match_info["response_id"]
        if _RESPONSE_ID.match(response_id) is None:
            raise errors.InvalidRequest("not a response id", param="response_id")
        for name in request.query:
            if name not in operation.query:
                raise errors.UnknownField(
                    f"unknown query parameter {name!r} for {operation.action}", param=name
                )
        caller = record.caller = self.identify(request)
        binding = await self.owners.get(response_id)
        if binding is None or binding.owner != self._owner:
            self.metrics.child(self.metrics.denials, ownership.NotOwned.code).inc()
            raise ownership.not_owned(response_id)
        if self.audit is not None:
            record.requested_model = self.redactor.scrub(binding.model)
        decision = record.decision = self.policies.decide(caller, binding.model, "responses")
        if not decision.allowed:
            self.metrics.child(self.metrics.denials, decision.reason).inc()
            raise errors.PolicyDenied(
                f"model {binding.model!r} is not allowed for this caller ({decision.reason})",
                code=decision.reason,
            )
        upstream = self.upstreams.get(binding.provider)
        target = self.routes.resolve(binding.model)
        if upstream is None:
            raise errors.NotFound(
                f"provider {binding.provider!r} of this response is no longer configured",
                code="provider_not_found",
            )
        record.provider = binding.provider
        if target is not None and target.provider == binding.provider:
            record.model = target.pattern
        credential = self.credentials.get(binding.provider)
        if credential is None:
            raise errors.NotReady(f"no credential loaded for provider {binding.provider}")
        assert self.proxy is not None  # set by the client_session context
        budgets = limiting.budgets(caller, decision)
        reservation = (
            await self.limiter.acquire(budgets, 0, self.new_request_id()) if budgets else None
        )
        try:
            answer = await self.proxy.forward_stored(
                request,
                upstream,
                operation,
                response_id,
                credential,
                record.outcome,
                record.charges,
            )
        finally:
            if reservation is not None:
                await self.limiter.settle(reservation, 0)
        if operation is endpoints.DELETE and answer.status < 300:
            await self.owners.forget(response_id)
        return answer

    @property
    def acknowledged(self) -> bool:
        return self.audit is not None and self.audit.acknowledged

    async def committed(self, record: RequestRecord, status: int) -> bool:
        """Emit the request's audit event before its final bytes and wait until it is on
        disk (acknowledged mode). False: it could not be recorded and the spool fails
        closed, so do not answer (failing open, the drop is counted and the answer goes)."""
        ticket = _audit(self, record, status, time.perf_counter() - record.started)
        if ticket is None or self.audit is None:
            return True
        return await self.audit.durable(ticket) or self.audit.fail_open

    async def _end_stream(self, request: web.Request, record: RequestRecord) -> None:
        if not await self.committed(record, record.outcome.status):
            # Not recorded, so not answered: the stream is cut before its last event.
            if request.transport is not None:
                request.transport.abort()
            raise ConnectionResetError("the audit event could not be written")

    def reload_tls(self, name: str) -> None:
        """Rebuild a provider's TLS context from its ``tls.ca_file`` (a rotated private CA);
        a file that does not load keeps the context in force."""
        provider = self.config.providers[name]
        ca_file = provider.tls.ca_file
        assert ca_file is not None  # only providers with a CA file are watched
        try:
            digest = hashlib.sha256(ca_file.read_bytes()).hexdigest()
            if digest == self._ca_digests.get(name):
                return
            context = tls.client_context(provider.tls.min_version, ca_file)
        except (OSError, ssl.SSLError) as exc:
            logger.error(
                "CA file rejected, keeping the trust in force",
                extra={"provider": name, "file": str(ca_file), "reason": str(exc)},
            )
            return
        first = name not in self._ca_digests
        self._ca_digests[name] = digest
        if not first:
            self.upstreams[name] = dataclasses.replace(self.upstreams[name], ssl_context=context)
            logger.info("CA file reloaded", extra={"provider": name, "file": str(ca_file)})

    def identify(self, request: web.Request) -> rules.Caller:
        tenant = request.headers.get(self._tenant_header)
        if tenant is None:
            return rules.Caller(self._namespace, self._service_account, None)
        if self.redactor.carries_credential(tenant):
            # The tenant goes into audit events, limiter keys, decisions and metrics as it
            # is: a credential pasted there would be kept in all of them. Refused without
            # quoting it.
            raise errors.InvalidRequest(
                f"{self._tenant_header} looks like a credential; send a tenant name",
                param=self._tenant_header,
                code="invalid_tenant",
            )
        if not models.is_valid_tenant(tenant):
            raise errors.InvalidRequest(
                f"{self._tenant_header} must be 1-63 characters of letters, digits, '.', '_' "
                "and '-', starting with a letter or digit",
                param=self._tenant_header,
                code="invalid_tenant",
            )
        return rules.Caller(self._namespace, self._service_account, tenant)

    async def list_models(self, request: web.Request) -> web.Response:
        caller = request[RECORD].caller = self.identify(request)
        listed = [
            t
            for t in self.routes.listed_models()
            if self.policies.decide(caller, t.pattern, "models.list").allowed
        ]
        if "anthropic-version" in request.headers:
            data = [
                {
                    "type": "model",
                    "id": t.pattern,
                    "display_name": t.pattern,
                    "created_at": "1970-01-01T00:00:00Z",
                }
                for t in listed
            ]
            first = data[0]["id"] if data else None
            last = data[-1]["id"] if data else None
            return web.json_response(
                {"data": data, "has_more": False, "first_id": first, "last_id": last}
            )
        return web.json_response(
            {
                "object": "list",
                "data": [
                    {"id": t.pattern, "object": "model", "created": 0, "owned_by": t.provider}
                    for t in listed
                ],
            }
        )


def estimate_tokens(data: bytes, payload: payloads.Body, default_output: int) -> int:
    """Tokens to reserve before the call: the input (~4 bytes a token, an overestimate for
    JSON) plus the most output the request allows itself."""
    output = payload.output_budget
    if output is None:
        output = 0 if isinstance(payload, payloads.EmbeddingBody) else default_output
    choices = getattr(payload, "n", None) or 1
    return len(data) // 4 + output * choices


async def read_body(
    request: web.Request,
    budget: budgeting.MemoryBudget,
    charges: budgeting.Charges,
    idle_timeout: float,
) -> bytes:
    """The body, admitted against the memory budget before it is read: by its
    Content-Length when it has one, chunk by chunk when it is chunked. A body that stops
    arriving for ``idle_timeout`` seconds is cut (nginx's client_body_timeout): a stalled
    upload must not hold its connection and its share of the budget for ever."""
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType(
            f"Content-Type must be application/json, not {request.content_type or 'empty'!r}"
        )
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        # The parser would inflate it: a few KiB can claim gigabytes, and a broken stream
        # surfaces deep in the read. Apps send JSON as it is.
        raise errors.UnsupportedMediaType("a Content-Encoding on the request is not supported")
    limit = request.client_max_size
    too_large = errors.PayloadTooLarge(f"request body is larger than {limit} bytes")
    length = request.content_length
    copies = budgeting.REQUEST_BODY_COPIES
    if length is not None:
        if length > limit:
            raise too_large  # refused unread
        budget.charge(charges, length * copies)
    chunks: list[bytes] = []
    size = 0
    loop = asyncio.get_running_loop()
    try:
        # One deadline for the whole read, pushed back by each chunk that arrives.
        async with asyncio.timeout(idle_timeout) as pause:
            async for chunk in request.content.iter_any():
                pause.reschedule(loop.time() + idle_timeout)
                size += len(chunk)
                if size > limit:
                    raise too_large
                if length is None:
                    budget.charge(charges, len(chunk) * copies)
                chunks.append(chunk)
    except TimeoutError:
        raise errors.RequestTimeout(
            f"the request body stopped arriving for {idle_timeout:g} s"
        ) from None
    except ConnectionResetError:  # aiohttp's "Connection lost": the client hung up
        raise errors.ClientClosedRequest("the client closed the connection") from None
    data = b"".join(chunks)
    if not data:
        raise errors.InvalidRequest("request body is empty")
    return data


PIPELINE = web.AppKey("sidegate.pipeline", Pipeline)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def dialect_of(path: str) -> endpoints.Dialect:
    return "anthropic" if path.startswith("/v1/messages") else "openai"


def error_response(
    error: errors.RequestError, dialect: endpoints.Dialect, request_id: str, redactor: Redactor
) -> web.Response:
    # Messages quote client input (a model name, a field name): a client that pastes a key
    # there must not get it back, nor have it reach a log that copies the message.
    message = redactor.scrub(error.message)
    param = redactor.scrub(error.param) if error.param else None
    if error.status >= 500:
        message = f"{message} (request id {request_id})"
    if dialect == "anthropic":
        body: dict[str, object] = {
            "type": "error",
            "error": {"type": error.error_type, "message": message},
            "request_id": request_id,
        }
    else:
        body = {
            "error": {
                "message": message,
                "type": error.error_type,
                "param": param,
                "code": error.code,
            }
        }
    return web.json_response(body, status=error.status, headers=error.headers)


# aiohttp's own HTTP errors (unknown path, wrong method, body too big) in our shape.
_HTTP_ERRORS: dict[int, type[errors.RequestError]] = {
    404: errors.NotFound,
    413: errors.PayloadTooLarge,
}


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, error mapping, metrics and the audit event: the cross-cutting concerns."""
    incoming = request.headers.get("x-request-id", "")
    pipeline = request.app[PIPELINE]
    # A client's id is kept (it ties the app's logs to ours) unless it could be a credential:
    # it is echoed, logged and audited, and nothing key-shaped (a key shape starting a word,
    # or a secret the sidecar holds) may be. "task-4242" is kept: "sk-" inside a word is not.
    usable = _REQUEST_ID.match(incoming) and not pipeline.redactor.carries_credential(incoming)
    request_id = incoming if usable else pipeline.new_request_id()
    route = request.match_info.route.name or "other"
    record = RequestRecord(request_id, route, started=time.perf_counter())
    request[RECORD] = record
    status = 499  # if the client goes away (the handler is cancelled), that is what it was
    # Proxied requests are tracked, so a shutdown can wait for them and cut what remains.
    task = asyncio.current_task() if route in AUDITED else None
    if task is not None:
        pipeline.in_flight.add(task)
    try:
        try:
            response = await _answer(request, handler, record, pipeline)
        except asyncio.CancelledError:
            if not pipeline.in_flight.cutting or task is None:
                raise  # the client went away
            # The sidecar's own cut at the end of its shutdown grace, before any answer.
            task.uncancel()
            response = _error(
                request, errors.ShuttingDown("the sidecar is shutting down"), record, pipeline
            )
        status = (
            record.outcome.status
            if response.prepared and record.outcome.status
            else response.status
        )
        record.error_code = record.error_code or record.outcome.error_code
        # Acknowledged audit: a whole body is written only once its event is on disk.
        if (
            pipeline.acknowledged
            and not response.prepared
            and not await pipeline.committed(record, status)
        ):
            status, response = 503, _unrecorded(request, record, pipeline)
        return response
    finally:
        # Exactly once per request, whatever happened, cancellation included.
        if task is not None:
            pipeline.in_flight.discard(task)
        pipeline.budget.release(record.charges)
        seconds = time.perf_counter() - record.started
        _observe(pipeline.metrics, record, status, seconds)
        _audit(pipeline, record, status, seconds)


def _unrecorded(request: web.Request, record: RequestRecord, pipeline: Pipeline) -> web.Response:
    error = AuditUnavailable("the audit event could not be written; the request is not answered")
    record.error_code = error.code
    return error_response(error, dialect_of(request.path), record.request_id, pipeline.redactor)


async def _answer(
    request: web.Request, handler: Handler, record: RequestRecord, pipeline: Pipeline
) -> web.StreamResponse:
    """The handler's response, or the error it raised in the API's error shape."""
    try:
        _admit(request, record, pipeline)
        return await handler(request)
    except errors.RequestError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _HTTP_ERRORS.get(exc.status, errors.InvalidRequest)(exc.reason)
        error.status = exc.status
    except Exception:
        logger.exception("unexpected error", extra={"request_id": record.request_id})
        error = errors.InternalError()
    return _error(request, error, record, pipeline)


def _error(
    request: web.Request, error: errors.RequestError, record: RequestRecord, pipeline: Pipeline
) -> web.Response:
    record.error_code = error.code
    if isinstance(error, errors.UpstreamError):
        # The request id the client is shown must lead to a log line. (Refusals of the
        # sidecar's own, 503s under load, are counted in metrics instead: a line each would
        # flood the log exactly when it matters.)
        logger.warning(
            "request failed",
            extra={
                "request_id": record.request_id,
                "status": error.status,
                "code": error.code,
                "reason": pipeline.redactor.scrub(error.message),
                "provider": record.provider,
            },
        )
    response = error_response(error, dialect_of(request.path), record.request_id, pipeline.redactor)
    if error.status == 503 or (request.body_exists and not request.content.is_eof()):
        response.force_close()  # refused unread, or the sidecar is stopping
    return response


def _admit(request: web.Request, record: RequestRecord, pipeline: Pipeline) -> None:
    """Checks before any work: the Host header, and room for one more proxied request."""
    host = request.headers.get("Host")
    if not request.raw_path.startswith("/"):
        # An absolute-form target ("POST http://evil.example/v1/..."): its authority is the
        # request's host and the Host header is ignored (RFC 9112 §3.2.2).
        host = request.host
    if not hosts.is_allowed(host, pipeline.hosts):
        pipeline.metrics.child(pipeline.metrics.refusals, "host").inc()
        raise errors.MisdirectedRequest(
            "this Host is not served here; call the sidecar as localhost or 127.0.0.1"
        )
    if record.route in AUDITED and len(pipeline.in_flight) > pipeline.config.listen.max_in_flight:
        pipeline.metrics.child(pipeline.metrics.refusals, "in_flight").inc()
        raise errors.Overloaded(
            "the sidecar is answering as many requests as it is configured to; retry shortly",
            headers={"Retry-After": str(budgeting.RETRY_AFTER_SECONDS)},
        )


def _observe(metrics: Metrics, record: RequestRecord, status: int, seconds: float) -> None:
    child = metrics.child
    child(metrics.requests, record.route, record.provider, record.model, str(status)).inc()
    child(metrics.request_seconds, record.route).observe(seconds)
    outcome = record.outcome
    if outcome.upstream_seconds:
        child(metrics.upstream_seconds, record.provider).observe(outcome.upstream_seconds)
    if outcome.usage.reported:
        tokens = metrics.tokens
        child(tokens, record.provider, record.model, "input").inc(outcome.usage.input_tokens)
        child(tokens, record.provider, record.model, "output").inc(outcome.usage.output_tokens)


# The audit action of each proxied route.
AUDITED = {
    "chat": "llm.chat.completions",
    "completions": "llm.completions",
    "embeddings": "llm.embeddings",
    "messages": "llm.messages",
    "messages.count_tokens": "llm.messages.count_tokens",
    "moderations": "llm.moderations",
    "responses": "llm.responses",
    "responses.retrieve": "llm.responses.retrieve",
    "responses.delete": "llm.responses.delete",
    "responses.cancel": "llm.responses.cancel",
    "responses.input_items": "llm.responses.input_items",
    "models": "llm.models.list",
}


def _result(status: int, code: str | None) -> str:
    if status < 400:
        return "allowed"
    if status == 429:
        return "rate_limited"
    if (
        status == 403
        and code is not None
        and (code in rules.DENIALS or code in (ownership.NotOwned.code, rules.STORE_FORBIDDEN))
    ):
        return "denied"
    return "error"


def _audit(pipeline: Pipeline, record: RequestRecord, status: int, seconds: float) -> int | None:
    """Emit the request's event unless it already was; the spool's ticket for it."""
    spool = pipeline.audit
    if spool is None or record.route not in AUDITED or record.audited:
        return None
    record.audited = True
    caller, decision, usage = record.caller, record.decision, record.outcome.usage
    identity = pipeline.config.identity
    code = record.error_code or (decision.reason if decision else None)
    return spool.emit(
        {
            "actor": {
                "kind": "workload",
                "namespace": identity.namespace,
                "service_account": identity.service_account,
                "pod": identity.pod,
                "tenant": caller.tenant if caller else None,
            },
            "action": AUDITED[record.route],
            "resource": {
                "provider": record.provider if record.provider != "-" else None,
                "model": record.requested_model,
                "route": record.route,
            },
            "outcome": {
                "result": _result(status, code),
                "status": status,
                "reason": code,
                "policy": decision.policy if decision else None,
            },
            "request_id": record.request_id,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
            if usage.reported
            else None,
            "latency_ms": round(seconds * 1000, 3),
        }
    )


async def _stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not the middleware: streamed responses are prepared inside the handler.
    record = request.get(RECORD)
    if record is not None:
        response.headers["x-request-id"] = record.request_id
    response.headers.popall("Server", None)  # aiohttp's own, naming its and Python's version


def _stored_handler(operation: endpoints.StoredOperation) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PIPELINE].handle_stored(operation, request)

    return handler


def _endpoint_handler(endpoint: endpoints.Endpoint) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await request.app[PIPELINE].handle(endpoint, request)

    return handler


async def expect_continue(request: web.Request) -> web.Response | None:
    """``Expect: 100-continue`` (RFC 9110 §10.1.1): say go on only to a body that could be
    read; anything else is answered in the API's error shape before the body comes (aiohttp's
    own answer is text that quotes the header back)."""
    pipeline = request.app[PIPELINE]
    expect = request.headers.get("Expect", "")
    error: errors.RequestError
    if expect.lower() != "100-continue":
        error = errors.InvalidRequest("the only expectation supported is 100-continue")
        error.status, error.code = 417, "expectation_failed"
    elif (request.content_length or 0) > request.client_max_size:
        error = errors.PayloadTooLarge(
            f"request body is larger than {request.client_max_size} bytes"
        )
    else:
        if request.version == aiohttp.HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the answer proper has not started
        return None
    response = error_response(
        error, dialect_of(request.path), pipeline.new_request_id(), pipeline.redactor
    )
    response.force_close()  # the body, if the client sends it anyway, is never read
    return response


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    pipeline = request.app[PIPELINE]
    store, holder = pipeline.credentials, pipeline.policies
    draining = pipeline.in_flight.draining
    details: dict[str, object] = {}
    if holder.last_reload_error is not None:  # the last good policy is still in force
        details["policy_last_reload_failed"] = holder.last_reload_error
    if store.ready and holder.ready and not draining:
        return web.json_response({"ready": True, **details})
    return web.json_response(
        {
            "ready": False,
            "missing_credentials": store.missing(),
            "credentials_stale": store.stale,  # broker mode: not heard from for too long
            "policy_loaded": holder.ready,
            **({"draining": True} if draining else {}),
            **details,
        },
        status=503,
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    return scraping.exposition(request.app[PIPELINE].metrics.registry)


async def _models(request: web.Request) -> web.Response:
    return await request.app[PIPELINE].list_models(request)


async def client_session(app: web.Application) -> AsyncIterator[None]:
    pipeline = app[PIPELINE]
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=60, keepalive_timeout=60)
    session = aiohttp.ClientSession(
        connector=connector,
        # The sidecar sets every upstream header itself; nothing implicit (cookies, default
        # User-Agent) rides along.
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
        auto_decompress=True,
    )
    pipeline.proxy = proxying.Proxy(
        session,
        pipeline.redactor,
        pipeline.metrics,
        max_response_bytes=pipeline.config.limits.max_response_bytes,
        max_event_bytes=pipeline.config.limits.max_sse_event_bytes,
        in_flight=pipeline.in_flight,
        budget=pipeline.budget,
        forward_headers=pipeline.config.limits.forward_headers,
    )
    yield
    await session.close()


async def file_reloaders(app: web.Application) -> AsyncIterator[None]:
    """Load credentials, policy and Redis settings, then reload each when its files change.

    One inotify watch per directory, however many things live in it."""
    pipeline = app[PIPELINE]
    store, holder, limiter = pipeline.credentials, pipeline.policies, pipeline.limiter

    async def reload_credentials() -> None:
        store.reload()

    reloaders: dict[Path, list[Callable[[], Awaitable[object]]]] = {}
    if store.directory is not None:  # None: the broker delivers them
        reloaders.setdefault(store.directory, []).append(reload_credentials)
    if holder.watch_directory is not None:
        reloaders.setdefault(holder.watch_directory, []).append(holder.reload)

    async def reload_limiter() -> None:
        limiter.reload()

    for path in limiter.files:
        reloaders.setdefault(path.parent, []).append(reload_limiter)

    def tls_reloader(name: str) -> Callable[[], Awaitable[None]]:
        async def reload_tls() -> None:
            pipeline.reload_tls(name)

        return reload_tls

    for name, provider in pipeline.config.providers.items():
        if provider.tls.ca_file is not None and provider.base_url.startswith("https:"):
            reloaders.setdefault(provider.tls.ca_file.parent, []).append(tls_reloader(name))

    async def run_all(functions: list[Callable[[], Awaitable[object]]]) -> None:
        for function in functions:
            await function()

    for functions in reloaders.values():
        await run_all(functions)
    tasks = [
        asyncio.create_task(watching.watch(directory, functools.partial(run_all, functions)))
        for directory, functions in reloaders.items()
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await limiter.close()


BROKER = web.AppKey("sidegate.broker", brokering.BrokerClient)


async def broker_deliveries(app: web.Application) -> AsyncIterator[None]:
    """With a broker: long-poll it for deliveries until shutdown (memory only)."""
    client = app.get(BROKER)
    if client is None:
        yield
        return
    limiter = app[PIPELINE].limiter
    if hasattr(limiter, "use"):  # the Redis limiter takes its URL and password from deliveries
        client.on_redis(limiter.use)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=brokering.tls_context(client.config), limit=2),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    task = asyncio.create_task(client.run(session))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await session.close()


def build_limiter(config: settings.SidecarSettings, metrics: Metrics) -> limiting.Limiter:
    limits = config.rate_limits
    if limits.backend == "redis":
        from sidegate.sidecar import redis_limiting  # only when asked for: ~15 MB

        assert limits.redis is not None  # validated by settings
        return redis_limiting.RedisLimiter(
            url_file=limits.redis.url_file,
            password_file=limits.redis.password_file,
            timeout=limits.redis.timeout_seconds,
            key_prefix=limits.redis.key_prefix,
            fail_mode=limits.fail_mode,
            metrics=metrics,
        )
    return limiting.LocalLimiter(max_keys=limits.local_max_keys, metrics=metrics)


def build_owners(config: settings.SidecarSettings, limiter: limiting.Limiter) -> ownership.Owners:
    """Where the creators of stored responses are kept: with the Redis rate-limit backend,
    in Redis (every replica sees them), else in this process."""
    limits = config.rate_limits
    if limits.backend == "redis":
        from sidegate.sidecar import redis_limiting, redis_ownership

        assert limits.redis is not None and isinstance(limiter, redis_limiting.RedisLimiter)
        return redis_ownership.RedisOwners(limiter, limits.redis.key_prefix)
    return ownership.LocalOwners(max_entries=limits.local_max_keys)


def build_spool(config: settings.SidecarSettings, metrics: Metrics) -> spool.Spool | None:
    audit = config.audit
    if audit is None:
        return None
    identity = config.identity
    return spool.Spool(
        audit.spool_directory,
        spool.Identity(identity.namespace, identity.service_account, identity.pod),
        AuditMetrics(metrics.registry),
        max_bytes=audit.max_spool_bytes,
        segment_max_bytes=audit.segment_max_bytes,
        segment_max_age=audit.segment_max_age_seconds,
        flush_interval=audit.flush_interval_ms / 1000,
        fail_open=audit.fail_mode == "open",
        signer=signing.Signer(),  # in memory only, a new key for every run
        digest_interval=audit.digest_interval_seconds,
        acknowledged=audit.durability == "acknowledged",
    )


async def audit_trail(app: web.Application) -> AsyncIterator[None]:
    """The spool writer and the S3 exporter. Registered first, so it stops last: the
    events of requests still in flight at SIGTERM are written and shipped."""
    pipeline = app[PIPELINE]
    trail, config = pipeline.audit, pipeline.config.audit
    if trail is None or config is None:
        yield
        return
    await asyncio.to_thread(trail.open)
    writer = asyncio.create_task(trail.run())
    exporter: exporting.S3Exporter | None = None
    uploading: asyncio.Task[None] | None = None
    if config.s3 is not None:
        s3, identity = config.s3, pipeline.config.identity
        exporter = exporting.S3Exporter(
            trail,
            trail.metrics,
            bucket=s3.bucket,
            prefix=s3.prefix,
            namespace=identity.namespace,
            pod=identity.pod,
            region=s3.region,
            endpoint_url=s3.endpoint_url,
            sse_kms_key_id=s3.sse_kms_key_id,
            object_lock_mode=s3.object_lock.mode if s3.object_lock else None,
            object_lock_days=s3.object_lock.retain_days if s3.object_lock else None,
            base_backoff=s3.base_backoff_seconds,
            max_backoff=s3.max_backoff_seconds,
        )
        await exporter.start()
        uploading = asyncio.create_task(exporter.run())
    yield
    await trail.close()  # writes what is queued (after any batch in progress) and seals
    writer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await writer
    if exporter is not None and uploading is not None:
        uploading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await uploading
        await exporter.drain(config.shutdown_grace_seconds)
        await exporter.stop()


def create_app(
    config: settings.SidecarSettings,
    *,
    redactor: Redactor | None = None,
    metrics: Metrics | None = None,
) -> web.Application:
    redactor = redactor or Redactor()
    metrics = metrics or Metrics()
    trail = build_spool(config, metrics)

    def report(action: str, result: str, reason: str | None, resource: dict[str, str]) -> None:
        if trail is not None:
            trail.emit(trail.system_event(action, result, reason=reason, resource=resource))

    store = credentials.CredentialStore(
        config.credentials.directory if config.credentials else None,
        {name: p.key_file or name for name, p in config.providers.items()},
        metrics,
        redactor,
        report=report,
    )
    trusted = config.policy.trusted_keys
    holder = policies.holder_for(
        config.policy.directory,
        config.policy.bundle_file,
        cache_ttl=config.policy.cache_ttl_seconds,
        metrics=metrics,
        report=report,
        signers=policies.Signers.of(trusted, config.identity.namespace) if trusted else None,
    )
    app = web.Application(
        middlewares=[request_context], client_max_size=config.limits.max_body_bytes
    )
    limiter = build_limiter(config, metrics)
    app[PIPELINE] = Pipeline(
        config, metrics, redactor, store, holder, limiter, trail, build_owners(config, limiter)
    )
    if config.broker is not None:
        client = app[BROKER] = brokering.BrokerClient(
            config.broker, config.identity.namespace, store, holder, metrics, redactor
        )
        if trail is not None:  # the audit key is registered through the broker
            client.audit_key = policy_signing.encode_public_key(trail.signer.public_key)
    for endpoint in endpoints.ALL:
        app.router.add_post(
            "/v1" + endpoint.path,
            _endpoint_handler(endpoint),
            name=endpoint.action,
            expect_handler=expect_continue,
        )
    for operation in endpoints.STORED:
        app.router.add_route(
            operation.method,
            "/v1/responses/{response_id}" + operation.suffix,
            _stored_handler(operation),
            name=operation.action,
            expect_handler=expect_continue,
        )
    app.router.add_get("/v1/models", _models, name="models", expect_handler=expect_continue)
    app.router.add_get("/healthz", healthz, name="healthz", expect_handler=expect_continue)
    app.router.add_get("/readyz", readyz, name="readyz", expect_handler=expect_continue)
    app.router.add_get("/metrics", metrics_endpoint, name="metrics", expect_handler=expect_continue)
    app.on_response_prepare.append(_stamp_request_id)
    app.cleanup_ctx.append(audit_trail)
    app.cleanup_ctx.append(client_session)
    app.cleanup_ctx.append(file_reloaders)
    app.cleanup_ctx.append(broker_deliveries)
    return app
