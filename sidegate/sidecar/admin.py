"""The admin API: policy CRUD, explain, and its own OpenAPI document.

It listens on its own loopback port and wants ``Authorization: Bearer <token>``, the token
read from a file (reloaded when it changes) and compared in constant time. Standalone,
writes go atomically into the policy directory and take effect before the answer is sent;
in cluster mode policies belong to the operator and writes are refused with a pointer to
kubectl.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sidegate import errors
from sidegate.audit import spool
from sidegate.policy import explaining, models, rules
from sidegate.redact import Secret
from sidegate.sidecar import credentials, policies, watching

logger = logging.getLogger(__name__)

PREFIX = "/admin/v1"
_MAX_BODY = 1024 * 1024


class ValidationFailed(errors.RequestError):
    status = 422
    code = "validation_failed"

    def __init__(self, message: str, details: list[dict[str, str]]) -> None:
        super().__init__(message)
        self.details = details


class Unauthorized(errors.RequestError):
    status = 401
    error_type = "authentication_error"
    code = "unauthorized"


class Conflict(errors.RequestError):
    status = 409
    code = "conflict"


def _details(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "path": ".".join(str(part) for part in error["loc"]),
            "message": "unknown field" if error["type"] == "extra_forbidden" else error["msg"],
        }
        for error in exc.errors(include_url=False, include_input=False)
    ]


class ExplainQuery(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str = Field(min_length=1, max_length=256)
    action: models.Action = "chat"
    namespace: str | None = Field(None, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    service_account: str | None = Field(None, alias="serviceAccount", max_length=253)
    tenant: str | None = Field(None, pattern=models.TENANT_PATTERN)


class AdminToken:
    """The admin bearer token, and ``<file>.previous`` while the operator's rotation overlap
    lasts: a client holding the old token keeps working until the new one reaches it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: the broker delivers the tokens (``replace``)
        self._tokens: tuple[str, ...] = ()

    def replace(self, tokens: Sequence[Secret]) -> None:
        """Take delivered tokens (current first, then the overlap one)."""
        self._tokens = tuple(t.reveal() for t in tokens)

    def reload(self) -> None:
        assert self.path is not None  # only a file-backed token is reloaded
        try:
            token = credentials.read_key(self.path).reveal()
        except errors.CredentialRejected as exc:
            logger.error(
                "admin token rejected, %s",
                "keeping the one in force" if self._tokens else "admin API refuses everything",
                extra={"reason": str(exc)},
            )
            return
        try:
            previous_path = self.path.with_name(self.path.name + credentials.PREVIOUS_SUFFIX)
            previous = credentials.read_key(previous_path).reveal()
        except errors.CredentialRejected:
            previous = None  # absent (no rotation under way) or unusable: the current one only
        self._tokens = (token,) if previous is None else (token, previous)

    def check(self, header: str | None) -> None:
        presented = (header[7:] if header and header[:7].lower() == "bearer " else "").encode()
        # compare_digest on bytes: constant time, whatever the length of what was sent; every
        # token is compared, so the time does not tell which one matched.
        matches = [hmac.compare_digest(presented, token.encode()) for token in self._tokens]
        if not any(matches):
            raise Unauthorized(
                "missing or wrong admin token",
                headers={"www-authenticate": 'Bearer realm="sidegate-admin"'},
            )


def write_atomically(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, fsync, rename: all or nothing."""
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _policy_json(policy: models.RBACPolicy) -> dict[str, Any]:
    return policy.model_dump(mode="json", by_alias=True, exclude_none=True)


class PolicyStore:
    """Admin reads and writes of the policy source, standalone or cluster."""

    def __init__(self, holder: policies.PolicyHolder, directory: Path | None) -> None:
        self.holder = holder
        self.directory = directory  # None: cluster mode, read-only
        self._writing = asyncio.Lock()  # one write (and its reload) at a time

    def _loaded(self) -> policies.Loaded:
        if self.holder.loaded is None:
            raise errors.NotReady("no policy has been loaded yet")
        return self.holder.loaded

    def list(self) -> list[dict[str, Any]]:
        loaded = self._loaded()
        if loaded.raw_bundle is None:
            return [_policy_json(loaded.policies[key]) for key in sorted(loaded.policies)]
        return [
            {
                "apiVersion": models.API_VERSION,
                "kind": models.KIND,
                "metadata": {"name": p.name, "namespace": p.namespace},
                "spec": p.model_dump(
                    mode="json", by_alias=True, exclude_none=True, exclude={"name", "namespace"}
                ),
            }
            for p in loaded.bundle().policies
        ]

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        key = f"{namespace}/{name}"
        for item in self.list():
            if f"{item['metadata']['namespace']}/{item['metadata']['name']}" == key:
                return item
        raise errors.NotFound(f"no policy {key}")

    def _writable_file(self, key: str) -> Path | None:
        if self.directory is None:
            raise Conflict(
                "policies are managed by the Sidegate operator in cluster mode: change them with "
                "`kubectl apply -f POLICY.yaml` or `kubectl delete rbacpolicy NAME -n NAMESPACE`"
            )
        loaded = self._loaded()
        path = loaded.files.get(key)
        if path is not None and sum(1 for other in loaded.files.values() if other == path) > 1:
            raise Conflict(
                f"policy {key} shares {path.name} with other policies; edit that file instead"
            )
        return path

    async def put(self, namespace: str, name: str, document: Any) -> tuple[dict[str, Any], bool]:
        async with self._writing:
            return await self._put(namespace, name, document)

    async def _put(self, namespace: str, name: str, document: Any) -> tuple[dict[str, Any], bool]:
        key = f"{namespace}/{name}"
        existing = self._writable_file(key)
        try:
            policy = models.RBACPolicy.model_validate(document)
        except ValidationError as exc:
            raise ValidationFailed("the policy is not valid", _details(exc)) from None
        if policy.key != (namespace, name):
            raise ValidationFailed(
                "metadata does not match the URL",
                [
                    {
                        "path": "metadata",
                        "message": f"expected namespace {namespace!r} and name {name!r}",
                    }
                ],
            )
        assert self.directory is not None  # checked by _writable_file
        path = existing or self.directory / f"{namespace}.{name}.yaml"
        previous = path.read_text(encoding="utf-8") if existing else None
        write_atomically(path, yaml.safe_dump(_policy_json(policy), sort_keys=False))
        if not await self.holder.reload():
            # The directory as a whole no longer loads: put it back as it was.
            if previous is None:
                path.unlink()
            else:
                write_atomically(path, previous)
            await self.holder.reload()
            raise Conflict(f"the policy directory would not load with {key}; nothing was changed")
        return _policy_json(policy), existing is None

    async def delete(self, namespace: str, name: str) -> None:
        key = f"{namespace}/{name}"
        async with self._writing:
            path = self._writable_file(key)
            if path is None:
                raise errors.NotFound(f"no policy {key}")
            path.unlink()
            await self.holder.reload()


STORE = web.AppKey("sidegate.admin.store", PolicyStore)
TOKEN = web.AppKey("sidegate.admin.token", AdminToken)


@dataclasses.dataclass(frozen=True)
class Context:
    identity: rules.Caller  # the sidecar's own namespace and service account
    pod: str
    audit: spool.Spool | None


CONTEXT = web.AppKey("sidegate.admin.context", Context)


def _error(error: errors.RequestError) -> web.Response:
    body: dict[str, Any] = {
        "message": error.message,
        "type": error.error_type,
        "param": error.param,
        "code": error.code,
    }
    if isinstance(error, ValidationFailed):
        body["details"] = error.details
    return web.json_response({"error": body}, status=error.status, headers=error.headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await _guarded(request, handler)
    if request.method in ("PUT", "DELETE"):
        _audit_write(request, response.status)
    return response


async def _guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        request.app[TOKEN].check(request.headers.get("authorization"))
        return await handler(request)
    except errors.RequestError as exc:
        return _error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = errors.InvalidRequest(exc.reason)
        error.status = exc.status
        return _error(error)


def _audit_write(request: web.Request, status: int) -> None:
    """One audit event per admin write attempt, whatever its outcome."""
    context = request.app[CONTEXT]
    trail, identity = context.audit, context.identity
    if trail is None:
        return
    namespace = request.match_info.get("namespace", "")
    name = request.match_info.get("name", "")
    trail.emit(
        {
            "actor": {
                "kind": "admin",
                "namespace": identity.namespace,
                "service_account": identity.service_account,
                "pod": context.pod,
                "tenant": None,
            },
            "action": "admin.policy.put" if request.method == "PUT" else "admin.policy.delete",
            "resource": {"route": f"policies/{namespace}/{name}"},
            "outcome": {
                "result": "ok" if status < 400 else "rejected",
                "status": status,
                "reason": None
                if status < 400
                else ("unauthorized" if status == 401 else "invalid"),
            },
        }
    )


async def _json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise errors.UnsupportedMediaType("Content-Type must be application/json")
    try:
        return json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        raise errors.PayloadTooLarge(f"body is larger than {_MAX_BODY} bytes") from None
    except ValueError:
        raise errors.InvalidRequest("body is not valid JSON") from None
    except RecursionError:  # nested deeper than the decoder's stack: no policy looks like it
        raise errors.InvalidRequest("body is nested too deeply") from None


async def list_policies(request: web.Request) -> web.Response:
    store = request.app[STORE]
    return web.json_response({"items": store.list(), "bundleHash": store.holder.index.hash})


async def get_policy(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[STORE].get(request.match_info["namespace"], request.match_info["name"])
    )


async def put_policy(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    stored, created = await request.app[STORE].put(namespace, name, await _json_body(request))
    logger.info(
        "policy written through the admin API",
        extra={"policy": f"{namespace}/{name}", "new": created},
    )
    return web.json_response(stored, status=201 if created else 200)


async def delete_policy(request: web.Request) -> web.Response:
    namespace, name = request.match_info["namespace"], request.match_info["name"]
    await request.app[STORE].delete(namespace, name)
    logger.info("policy deleted through the admin API", extra={"policy": f"{namespace}/{name}"})
    return web.Response(status=204)


async def explain_endpoint(request: web.Request) -> web.Response:
    try:
        query = ExplainQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise ValidationFailed("invalid explain query", _details(exc)) from None
    identity = request.app[CONTEXT].identity
    caller = rules.Caller(
        query.namespace or identity.namespace,
        query.service_account or identity.service_account,
        query.tenant,
    )
    return web.json_response(
        explaining.explain(request.app[STORE].holder.index, caller, query.model, query.action)
    )


def _query_parameters(model: type[BaseModel], descriptions: dict[str, str]) -> list[dict[str, Any]]:
    """OpenAPI query parameters from the pydantic model that validates them, so the document
    states the same lengths, patterns and enums the API enforces."""
    schema = model.model_json_schema(by_alias=True)
    required = set(schema.get("required", ()))
    parameters = []
    for name, field in schema["properties"].items():
        variants = [v for v in field.get("anyOf", [field]) if v.get("type") != "null"]
        rules = {k: v for k, v in variants[0].items() if k != "title"}
        if field.get("default") is not None:
            rules["default"] = field["default"]
        parameter: dict[str, Any] = {"name": name, "in": "query", "schema": rules}
        if name in required:
            parameter["required"] = True
        if name in descriptions:
            parameter["description"] = descriptions[name]
        parameters.append(parameter)
    return parameters


def openapi() -> dict[str, Any]:
    policy_schema = models.RBACPolicy.model_json_schema(
        by_alias=True, ref_template="#/components/schemas/{model}"
    )
    schemas = policy_schema.pop("$defs", {})
    schemas["RBACPolicy"] = policy_schema
    error = {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "path": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        },
                    },
                },
            }
        },
    }
    schemas["Error"] = error

    def answer(description: str, schema: str | None = None) -> dict[str, Any]:
        found: dict[str, Any] = {"description": description}
        if schema:
            found["content"] = {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}
            }
        return found

    errors_ = {"401": answer("missing or wrong token", "Error")}
    # The path's namespace and name are a policy's, with the same rules as its metadata.
    metadata = schemas["ObjectMeta"]["properties"]
    path_rules = {
        key: {k: v for k, v in metadata[key].items() if k in ("type", "pattern", "maxLength")}
        for key in ("namespace", "name")
    }
    one = {
        "parameters": [
            {
                "name": "namespace",
                "in": "path",
                "required": True,
                "schema": path_rules["namespace"],
            },
            {"name": "name", "in": "path", "required": True, "schema": path_rules["name"]},
        ],
        "get": {
            "summary": "Read one policy",
            "responses": {
                "200": answer("the policy", "RBACPolicy"),
                "404": answer("no such policy", "Error"),
                **errors_,
            },
        },
        "put": {
            "summary": "Create or replace a policy (standalone mode)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/RBACPolicy"}}
                },
            },
            "responses": {
                "200": answer("replaced", "RBACPolicy"),
                "201": answer("created", "RBACPolicy"),
                "400": answer("the body is not JSON", "Error"),
                "415": answer("the body is not application/json", "Error"),
                "409": answer("cluster mode, or the file holds other policies", "Error"),
                "422": answer("invalid policy, with field paths", "Error"),
                **errors_,
            },
        },
        "delete": {
            "summary": "Delete a policy (standalone mode)",
            "responses": {
                "204": answer("deleted"),
                "404": answer("no such policy", "Error"),
                "409": answer("cluster mode", "Error"),
                **errors_,
            },
        },
    }
    explain_parameters = _query_parameters(
        ExplainQuery,
        {"namespace": "default: the sidecar's", "serviceAccount": "default: the sidecar's"},
    )
    return {
        "openapi": "3.1.0",
        "info": {"title": "Sidegate sidecar admin API", "version": "v1"},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            f"{PREFIX}/policies": {
                "get": {
                    "summary": "List policies",
                    "responses": {"200": answer("all policies in force"), **errors_},
                }
            },
            f"{PREFIX}/policies/{{namespace}}/{{name}}": one,
            f"{PREFIX}/explain": {
                "get": {
                    "summary": "Would this caller be allowed this model, and why",
                    "parameters": explain_parameters,
                    "responses": {
                        "200": answer("decision, matching rules, limits in force"),
                        "422": answer("invalid query", "Error"),
                        **errors_,
                    },
                }
            },
            f"{PREFIX}/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": answer("OpenAPI 3.1"), **errors_},
                }
            },
        },
    }


async def openapi_endpoint(request: web.Request) -> web.Response:
    return web.json_response(openapi())


async def token_reloader(app: web.Application) -> AsyncIterator[None]:
    token = app[TOKEN]
    if token.path is None:  # delivered by the broker
        yield
        return
    token.reload()

    async def reload() -> None:
        token.reload()

    task = asyncio.create_task(watching.watch(token.path.parent, reload))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def create_admin_app(
    holder: policies.PolicyHolder,
    directory: Path | None,
    token_file: Path | None,
    identity: rules.Caller,
    *,
    pod: str = "",
    audit: spool.Spool | None = None,
) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=_MAX_BODY)
    app[CONTEXT] = Context(identity, pod, audit)
    app[STORE] = PolicyStore(holder, directory)
    app[TOKEN] = AdminToken(token_file)
    app.router.add_get(f"{PREFIX}/policies", list_policies)
    app.router.add_get(f"{PREFIX}/policies/{{namespace}}/{{name}}", get_policy)
    app.router.add_put(f"{PREFIX}/policies/{{namespace}}/{{name}}", put_policy)
    app.router.add_delete(f"{PREFIX}/policies/{{namespace}}/{{name}}", delete_policy)
    app.router.add_get(f"{PREFIX}/explain", explain_endpoint)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi_endpoint)
    app.cleanup_ctx.append(token_reloader)
    return app


def for_sidecar(main: web.Application) -> web.Application | None:
    """The admin app that goes with a sidecar app (``app.create_app``); None when the
    config has no ``admin`` section."""
    from sidegate.sidecar import app  # the admin API sits on top of the proxy, not inside it

    pipeline = main[app.PIPELINE]
    config = pipeline.config
    if config.admin is None:
        return None
    identity = config.identity
    admin_app = create_admin_app(
        pipeline.policies,
        config.policy.directory,
        config.admin.token_file,
        rules.Caller(identity.namespace, identity.service_account),
        pod=identity.pod,
        audit=pipeline.audit,
    )
    broker = main.get(app.BROKER)
    if broker is not None:
        broker.on_admin_tokens(admin_app[TOKEN].replace)
    return admin_app
