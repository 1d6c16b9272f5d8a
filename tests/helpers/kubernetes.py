"""kmock's Kubernetes emulator, with the gaps TESTING.md lists filled in, and the operator
running against it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import io
import itertools
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.web
import jsonpatch
import jsonpointer
import kmock
import kopf
import yaml

from sidegate.operator import leadership, running, signing_keys
from sidegate.operator.handlers import release
from sidegate.operator.state import OperatorState
from tests.helpers import authorizing

_versions = itertools.count(1)
# How long kopf may take to stop: its workers finish the handler or API call in progress.
STOP_SECONDS = 30
POLICIES = "/apis/sidegate.io/v1alpha1/namespaces/{ns}/rbacpolicies"
RELEASE = "sidegate-system"
SOURCES = f"/api/v1/namespaces/{RELEASE}/secrets"
RELEASE_CONFIG_MAPS = f"/api/v1/namespaces/{RELEASE}/configmaps"
PUBLIC_KEYS = signing_keys.PUBLIC
# The operator's bearer token in these tests: it tells its requests from the test's own.
OPERATOR_TOKEN = "operator-test"
# Further operator replicas' tokens: the same service account (the same RBAC), each its own
# token, so the emulator can tell which replica wrote what.
REPLICA_TOKENS = ("operator-test-2", "operator-test-3")
WEBHOOK_TOKEN = "webhook-test"  # a `--webhook-only` replica's (the webhook Deployment's)
PEERING = "sidegate-sidegate-system"  # the ClusterKopfPeering the chart creates
PEERINGS = "/apis/kopf.dev/v1/clusterkopfpeerings"
CLEANUP_TOKEN = "cleanup-test"  # the pre-delete hook's, likewise
BROKER_TOKEN = "broker-test"  # a broker replica's, likewise


TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
# What a real API server answers for a token without a bound pod or with no audiences asked.
API_SERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


@dataclasses.dataclass(frozen=True)
class IssuedToken:
    """A projected ServiceAccount token the emulated API server issued (TokenRequest)."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expires: float  # unix time
    pod_name: str | None = None
    pod_uid: str | None = None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Emulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """Stamps uid, resourceVersion and creationTimestamp as a real API server does (kopf's
    patches rely on resourceVersion), and answers TokenReview from the tokens it issued."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.tokens: dict[str, IssuedToken] = {}
        self.token_reviews = 0
        # (resource plural, namespace, action) of each request the operator made (its token).
        self.operator_calls: list[tuple[str | None, str | None, str]] = []
        # Service accounts by bearer token, held to the chart's RBAC (authorizing.py); a
        # request without a known token is the test's own (a cluster admin's).
        self.accounts: dict[str, authorizing.Grants] = {}
        self.forbidden: list[str] = []
        # Every accepted write's body by (plural, namespace, name), in order; and how many
        # writes a resourceVersion precondition refused (409), as kube-apiserver does.
        self.writes: dict[tuple[str, str | None, str | None], list[dict[str, Any]]] = {}
        self.conflicts = 0
        # Who made each accepted write (create, patch, update, delete): the bearer token,
        # and (resource plural, namespace, name).
        self.writers: list[tuple[str, tuple[str, str | None, str | None]]] = []

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        pod: dict[str, Any] | None = None,
        audiences: tuple[str, ...] = ("sidegate",),
        seconds: float = 600,
    ) -> str:
        """A JWT-shaped bound token, as the kubelet gets with TokenRequest (boundObjectRef
        the pod). Its signature is random: only this table makes it valid."""
        now = time.time()
        issued = IssuedToken(
            namespace,
            service_account,
            audiences,
            now + seconds,
            pod["metadata"]["name"] if pod else None,
            pod["metadata"]["uid"] if pod else None,
        )
        claims: dict[str, Any] = {
            "aud": list(audiences),
            "exp": int(issued.expires),
            "iat": int(now),
            "nbf": int(now),
            "iss": API_SERVER_AUDIENCE,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": str(uuid.uuid4())},
            },
        }
        if pod:
            claims["kubernetes.io"]["pod"] = {"name": issued.pod_name, "uid": issued.pod_uid}
        header = _b64url(json.dumps({"alg": "RS256", "kid": "emulated"}).encode())
        token = ".".join(
            [header, _b64url(json.dumps(claims).encode()), _b64url(secrets.token_bytes(64))]
        )
        self.tokens[token] = issued
        return token

    def pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        for (resource, found_namespace, found_name), obj in self._objects.items():
            if (resource.plural, found_namespace, found_name) == ("pods", namespace, name):
                return None if obj.deleted else dict(obj.raw)
        return None

    def _review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The authenticator's verdict, as kube-apiserver gives it for bound service account
        tokens: unknown, expired, for none of the asked audiences, or bound to a pod that is
        gone (or has another uid) → not authenticated, with an error and no user."""
        issued = self.tokens.get(str(spec.get("token") or ""))
        asked = list(spec.get("audiences") or [API_SERVER_AUDIENCE])
        if issued is None:
            return {"authenticated": False, "error": "[invalid bearer token]"}
        if issued.expires <= time.time():
            return {"authenticated": False, "error": "[invalid bearer token, Token has expired.]"}
        audiences = [a for a in asked if a in issued.audiences]
        if not audiences:
            return {
                "authenticated": False,
                "error": f"[invalid bearer token, token audiences {list(issued.audiences)} is "
                f"invalid for the target audiences {asked}]",
            }
        extra: dict[str, list[str]] = {
            "authentication.kubernetes.io/credential-id": ["JTI=" + str(uuid.uuid4())]
        }
        if issued.pod_name is not None:
            pod = self.pod(issued.namespace, issued.pod_name)
            if pod is None or pod["metadata"].get("uid") != issued.pod_uid:
                return {
                    "authenticated": False,
                    "error": "[invalid bearer token, pod not found or uid mismatch]",
                }
            extra["authentication.kubernetes.io/pod-name"] = [issued.pod_name]
            extra["authentication.kubernetes.io/pod-uid"] = [str(issued.pod_uid)]
        return {
            "authenticated": True,
            "audiences": audiences,
            "user": {
                "username": f"system:serviceaccount:{issued.namespace}:{issued.service_account}",
                "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, issued.service_account)),
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{issued.namespace}",
                    "system:authenticated",
                ],
                "extra": extra,
            },
        }

    async def _handle(self, request: Any) -> aiohttp.web.StreamResponse:
        # kmock logs every request and matches each new one by scanning that log, so a test
        # with hundreds of pods and thousands of calls slows down quadratically. No test
        # reads the log: a request leaves it once answered (streams: once they end).
        if request.headers.get("Authorization") == f"Bearer {OPERATOR_TOKEN}":
            plural = request.resource.plural if request.resource is not None else None
            self.operator_calls.append((plural, request.namespace, str(request.action)))
        refusal = self._authorize(request)
        if refusal is not None:
            return refusal
        try:
            answer = await self._answer(request)
            if answer.status < 300 and request.resource is not None and request.action in _WRITES:
                token = str(request.headers.get("Authorization") or "").removeprefix("Bearer ")
                data = request.data if isinstance(getattr(request, "data", None), dict) else {}
                name = request.name or (data.get("metadata") or {}).get("name")
                self.writers.append((token, (request.resource.plural, request.namespace, name)))
            return answer
        finally:
            for index in range(len(self._requests) - 1, -1, -1):
                if self._requests[index] is request:
                    del self._requests[index]
                    break

    def _authorize(self, request: Any) -> aiohttp.web.StreamResponse | None:
        """A 403 when a service account's request is not allowed by its RBAC."""
        header = str(request.headers.get("Authorization") or "")
        account = self.accounts.get(header.removeprefix("Bearer "))
        if account is None and header:
            # A token the test did not issue to an account: kube-apiserver answers 401, so a
            # program that logs in some other way cannot escape the chart's RBAC here.
            self.forbidden.append("unauthenticated: a bearer token of no known account")
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": "Unauthorized",
                    "reason": "Unauthorized",
                    "code": 401,
                },
                status=401,
            )
        if account is None or request.resource is None or not request.resource.plural:
            return None  # the test itself, or discovery (/api/v1, /apis/<group>/<version>)
        method = str(getattr(request.method, "value", request.method)).upper()
        verb = {
            kmock.action.LIST: "list",
            kmock.action.WATCH: "watch",
            kmock.action.FETCH: "get",
            kmock.action.CREATE: "create",
            kmock.action.UPDATE: "update" if method == "PUT" else "patch",
            kmock.action.DELETE: "delete" if request.name else "deletecollection",
        }[request.action]
        group = request.resource.group or ""
        resource = request.resource.plural
        if request.subresource:
            resource = f"{resource}/{request.subresource}"
        if account.allows(verb, group, resource, request.namespace, request.name):
            return None
        self.forbidden.append(f"{verb} {group}/{resource} in {request.namespace or '(cluster)'}")
        return aiohttp.web.json_response(
            authorizing.forbidden(verb, group, resource, request.namespace), status=403
        )

    async def _answer(self, request: Any) -> aiohttp.web.StreamResponse:
        if request.url.path == TOKENREVIEWS:
            if str(request.method).upper().endswith("POST"):
                body = request.data if isinstance(request.data, dict) else {}
                self.token_reviews += 1
                spec = body.get("spec") or {}
                return aiohttp.web.json_response(
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "metadata": {"creationTimestamp": None},
                        "spec": spec,
                        "status": self._review(spec),
                    },
                    status=201,
                )
            return aiohttp.web.json_response({"kind": "Status", "code": 405}, status=405)
        refusal = self._failed_patch_test(request)
        if refusal is not None:
            return refusal
        data = request.data if isinstance(getattr(request, "data", None), dict) else None
        if data is not None and request.resource is not None:
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", "2026-11-22T00:00:00Z")
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = str(next(_versions))
            elif request.action == kmock.action.UPDATE:
                key = (request.resource, request.namespace, request.name)
                expected = meta.get("resourceVersion")
                if expected is not None and key in self._objects:
                    found = self._objects[key].get("metadata", {}).get("resourceVersion")
                    if str(expected) != str(found):
                        self.conflicts += 1
                        return aiohttp.web.json_response(_conflict(request.name), status=409)
                meta["resourceVersion"] = str(next(_versions))
                if "spec" in data and key in self._objects:  # a spec change: a new generation
                    generation = self._objects[key].get("metadata", {}).get("generation", 1)
                    meta["generation"] = generation + 1
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                body = json.loads(json.dumps(data))
                answer = await super()._handle(request)
                if answer.status < 300:  # accepted (a create of an existing object is 409)
                    name = request.name or meta.get("name")
                    written = (request.resource.plural, request.namespace, name)
                    self.writes.setdefault(written, []).append(body)
                return answer  # type: ignore[no-any-return]
        return await super()._handle(request)  # type: ignore[no-any-return]

    def _failed_patch_test(self, request: Any) -> aiohttp.web.StreamResponse | None:
        """A JSON patch whose ``test`` operations fail (kopf's finalizer and status patches
        test the resourceVersion they read): kube-apiserver answers 422 Unprocessable Entity
        (apiserver endpoints/handlers/patch.go, applyJSPatch), which kopf takes as "changed
        meanwhile, patch again on the next cycle". kmock answers 500, which kopf retries for
        a minute and then throttles the object, dropping its events (its index goes stale)."""
        ops = getattr(request, "data", None)
        if request.action != kmock.action.UPDATE or not isinstance(ops, list):
            return None
        tests = [op for op in ops if isinstance(op, dict) and op.get("op") == "test"]
        key = (request.resource, request.namespace, request.name)
        if not tests or key not in self._objects or self._objects[key].deleted:
            return None  # kmock answers 404 for what is not there
        try:
            jsonpatch.apply_patch(dict(self._objects[key].raw), tests)
        except (jsonpatch.JsonPatchTestFailed, jsonpointer.JsonPointerException) as exc:
            self.conflicts += 1
            return aiohttp.web.json_response(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": str(exc),
                    "code": 422,
                },
                status=422,
            )
        return None


_WRITES = (kmock.action.CREATE, kmock.action.UPDATE, kmock.action.DELETE)


def _conflict(name: str | None) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'Operation cannot be fulfilled on "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again",
        "reason": "Conflict",
        "code": 409,
    }


@contextlib.asynccontextmanager
async def cluster() -> AsyncIterator[tuple[Emulator, str]]:
    async with Emulator() as k8s, kmock.Server(k8s) as server:
        k8s.resources.load_bundled()
        k8s.resources["sidegate.io/v1alpha1/rbacpolicies"] = kmock.ResourceInfo(
            kind="RBACPolicy",
            namespaced=True,
            verbs={"list", "watch", "get", "create", "update", "patch", "delete"},
            subresources={"status"},
        )
        # kopf's peering objects (the chart's CRD and object), for operators with a leader.
        k8s.resources["kopf.dev/v1/clusterkopfpeerings"] = kmock.ResourceInfo(
            kind="ClusterKopfPeering",
            namespaced=False,
            verbs={"list", "watch", "get", "create", "update", "patch", "delete"},
        )
        # The operator's requests carry its token: held to the chart's rendered RBAC.
        for token in (OPERATOR_TOKEN, *REPLICA_TOKENS):
            k8s.accounts[token] = authorizing.operator_grants()
        k8s.accounts[WEBHOOK_TOKEN] = authorizing.webhook_grants()
        # The chart's peering object: the replicas of an operator with --peering elect in it.
        assert (
            await send(
                k8s,
                "POST",
                PEERINGS,
                {
                    "apiVersion": "kopf.dev/v1",
                    "kind": "ClusterKopfPeering",
                    "metadata": {"name": PEERING},
                },
            )
            < 300
        )
        k8s.accounts[CLEANUP_TOKEN] = authorizing.cleanup_grants()
        k8s.accounts[BROKER_TOKEN] = authorizing.broker_grants()
        yield k8s, str(server.url).rstrip("/")
        assert not k8s.forbidden, f"refused by the chart's RBAC: {k8s.forbidden[:5]}"


@contextlib.asynccontextmanager
async def operator(
    url: str,
    listener: running.WebhookListener | None = None,
    namespaces: list[str] | None = None,
    token: str = OPERATOR_TOKEN,
    reconcile: bool = True,
    login: Any = None,
    **settings: Any,
) -> AsyncIterator[OperatorState]:
    """The registry `sidegate operator` runs, logged in to the emulator instead; ``settings``
    are OperatorState fields (overlap, admin_rotation, sidecar, peering, ...); ``namespaces``
    as `--namespace` gives them (RBACPolicies served only there); ``token`` one the emulator
    holds to the operator's RBAC (a replica's own, to tell its writes from another's);
    ``reconcile=False`` as `--webhook-only` (with the webhook's token). With a listener and
    reconciling, it is ready once the signing keys it injects are published. ``login``, when
    given, replaces the fixed ``token`` (e.g. `sidegate operator`'s own login, reading a
    kubeconfig the test rewrites as a rotated token)."""
    state = OperatorState(
        login=login or (lambda **_: kopf.ConnectionInfo(server=url, token=token)),
        namespace=RELEASE,
        **settings,
    )
    registry = running.build_registry(state, listener, reconcile=reconcile)

    @kopf.on.startup(registry=registry)
    def emulator_settings(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.level = 0
        settings.watching.server_timeout = 5
        if reconcile:  # a webhook-only registry sets it itself: that is what is tested
            settings.scanning.disabled = True  # kmock answers /api/v1/namespaces with 500

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        kopf.operator(
            registry=registry,
            clusterwide=not namespaces,
            namespaces=namespaces or [],
            stop_flag=stop,
            ready_flag=ready,
            **running.peering_arguments(state.peering),
        )
    )
    try:
        await asyncio.wait_for(ready.wait(), 10)
        if listener is not None and reconcile:
            await eventually(lambda: get_as_admin(url, f"{RELEASE_CONFIG_MAPS}/{PUBLIC_KEYS}"), 20)
        yield state
    finally:
        await _stop(task, stop, state)


async def _stop(task: asyncio.Task[None], stop: asyncio.Event, state: OperatorState) -> None:
    """Stop kopf, and close what the operator opened even when kopf cannot stop in time (its
    cleanup handlers are then cancelled, not run): a test that fails must not leave sessions
    and sockets behind to fail the next tests with ResourceWarnings."""
    stop.set()
    try:
        async with asyncio.timeout(STOP_SECONDS):
            await asyncio.shield(task)
    except TimeoutError:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    finally:
        await leadership.stop(state)  # no-ops when kopf's cleanup handler did them already
        await release.stop(state)
        if state.client is not None:
            await state.client.close()


async def operator_process(
    url: str, workdir: Path, token: str, name: str, *flags: str
) -> asyncio.subprocess.Process:
    """`sidegate operator` as a replica of the chart runs it (``--peering`` and its pod name),
    logged in to the emulator as the account of ``token``; its log in ``workdir/<name>.log``.
    A process of its own: kopf cancels every task of its event loop on the way out, so two
    replicas cannot share one."""
    with (workdir / f"{name}.log").open("w") as log:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sidegate",
            "operator",
            f"--own-namespace={RELEASE}",
            f"--peering={PEERING}",
            *flags,
            env={
                **os.environ,
                "KUBECONFIG": str(kubeconfig(workdir / f"{name}.kubeconfig", url, token)),
                "SIDEGATE_POD_NAME": name,
            },
            stderr=log,
        )


async def stop_process(process: asyncio.subprocess.Process) -> None:
    """An ``operator_process`` stopped as the kubelet stops a pod: SIGTERM, SIGKILL after 30 s."""
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(30):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def writers(k8s: Emulator) -> list[str]:
    """The tokens that wrote anything but the peering object (the keep-alives every replica
    writes), in order of their first write."""
    found = [token for token, (plural, _, _) in k8s.writers if plural != "clusterkopfpeerings"]
    return list(dict.fromkeys(found))


def kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig for a `sidegate` process: the emulator, as the account of ``token``."""
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "account", "user": {"token": token}}],
                "contexts": [
                    {"name": "emulator", "context": {"cluster": "emulator", "user": "account"}}
                ],
                "current-context": "emulator",
            }
        )
    )
    return path


async def eventually(check: Any, seconds: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            result = await check()
            if result:
                return result
        except (KeyError, AssertionError, aiohttp.ClientError):
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def operator_requests(k8s: Emulator) -> list[tuple[str | None, str | None, str]]:
    """What the operator asked the API server: (resource plural, namespace, action)."""
    return list(k8s.operator_calls)


async def get_as_admin(url: str, path: str) -> dict[str, Any] | None:
    """An object, read as the test (a cluster admin), by the emulator's URL alone."""
    async with aiohttp.ClientSession() as session, session.get(url + path) as answer:
        return await answer.json() if answer.status == 200 else None


async def get(k8s: Emulator, path: str) -> dict[str, Any] | None:
    async with k8s.clients[0].get(path) as answer:
        return await answer.json() if answer.status == 200 else None


async def send(k8s: Emulator, method: str, path: str, body: Any = None) -> int:
    headers = {
        "Content-Type": "application/merge-patch+json" if method == "PATCH" else "application/json"
    }
    # A BytesIO, not bytes: a bundle of thousands of policies is megabytes, and aiohttp warns
    # (an error here) on a large body sent in one write.
    data = io.BytesIO(json.dumps(body).encode()) if body is not None else None
    async with k8s.clients[0].request(method, path, data=data, headers=headers) as answer:
        return answer.status


def policy(name: str, models: list[str], namespace: str = "team-a") -> dict[str, Any]:
    """An RBACPolicy granting ServiceAccount app these models."""
    return {
        "apiVersion": "sidegate.io/v1alpha1",
        "kind": "RBACPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "subjects": [{"kind": "ServiceAccount", "name": "app"}],
            "rules": [{"effect": "Allow", "models": models}],
        },
    }


def source_secret(**keys: str) -> dict[str, Any]:
    """A provider key Secret as the operator finds it: labelled, in its namespace."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "llm-keys",
            "namespace": "sidegate-system",
            "labels": {"sidegate.io/credentials": "source"},
        },
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
    }
