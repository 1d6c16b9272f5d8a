"""The sidecar's configuration file: one YAML document validated by these models.

Every model forbids unknown keys, so a typo is an error that names the key rather than a
setting silently ignored. ``docs/configuration.md`` documents each field; keep them equal.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sidegate import errors
from sidegate.policy import signing
from sidegate.tls import TLSVersionName

_PROVIDER_NAME = r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$"
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
# Client headers `forward_headers` may never name. Credentials: the client's own (the sidecar
# sets the provider's auth header from the key file) and a proxy's, and its cookies.
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "api-key", "cookie"}
)
# Hop-by-hop headers (RFC 9110 section 7.6.1, plus the older keep-alive, proxy-connection
# and proxy-authenticate of RFC 2616 section 13.5.1) and the ones that address and frame the
# sidecar's own request to the provider (it may rewrite the body, so the client's length is
# not the provider's).
_CONNECTION_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ListenSettings(_Strict):
    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(
        4000, ge=0, le=65535, description="Port of the OpenAI/Anthropic API; 0 picks a free one."
    )
    allow_non_loopback: bool = Field(
        False,
        description="Permit a non-loopback `host`. The sidecar has no client authentication: "
        "anything that reaches the port can spend the provider keys.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header names accepted besides localhost, 127.0.0.1, [::1] and "
        "`host` itself (any port). Anything else is refused: a browser page on a DNS name "
        "rebound to 127.0.0.1 must not reach the provider keys.",
    )
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        le=600,
        description="Time a client has to send a request's line and headers, from its "
        "first byte (nginx's client_header_timeout).",
    )
    body_timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="Longest pause while a request body is arriving (nginx's "
        "client_body_timeout); a stalled body is answered 408 and its connection closed.",
    )
    keepalive_timeout_seconds: float = Field(
        75.0, gt=0, le=3600, description="An idle keep-alive connection is closed after this."
    )
    max_connections: int = Field(
        1024, ge=1, le=65536, description="Open client connections; past it new ones get a 503."
    )
    max_in_flight: int = Field(
        512,
        ge=1,
        le=65536,
        description="Proxied requests being answered at once; past it a 503 with Retry-After.",
    )
    drain_seconds: float = Field(
        5.0,
        ge=0,
        le=600,
        description="After SIGTERM, keep accepting and serving this long: the application "
        "may still be finishing its own requests.",
    )
    shutdown_grace_seconds: float = Field(
        20.0,
        ge=0,
        le=3600,
        description="Then stop accepting and give requests in flight this long to finish; "
        "what remains is cut (streams end with an error event; audit status 503).",
    )

    @model_validator(mode="after")
    def _loopback_only(self) -> ListenSettings:
        if not is_loopback(self.host) and not self.allow_non_loopback:
            raise ValueError(
                f"host {self.host!r} is not a loopback address; set "
                "listen.allow_non_loopback: true (or --allow-non-loopback) if you mean it"
            )
        return self


class TLSSettings(_Strict):
    min_version: TLSVersionName = Field("1.2", description="Lowest TLS version accepted.")
    ca_file: Path | None = Field(
        None, description="PEM bundle that replaces the system trust store for this provider."
    )


class Timeouts(_Strict):
    connect: float = Field(10.0, gt=0, le=300, description="Seconds to open a connection.")
    read: float = Field(
        300.0, gt=0, le=3600, description="Seconds to wait for the next bytes of an answer."
    )


class _ProviderBase(_Strict):
    base_url: str = Field(description="Provider API root, e.g. https://api.openai.com/v1.")
    key_file: str | None = Field(
        None,
        description="File name of the key inside credentials.directory; defaults to the "
        "provider's name. `<key_file>.previous`, if present, is the rotation overlap key.",
        pattern=r"^[A-Za-z0-9._-]{1,253}$",
    )
    allow_insecure_http: bool = Field(
        False, description="Permit an http:// base_url; only honoured for a loopback host."
    )
    tls: TLSSettings = Field(default_factory=TLSSettings)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Static headers added to every upstream request (e.g. OpenAI-Project). "
        "Not for secrets: keys come from key files only.",
    )

    @field_validator("base_url")
    @classmethod
    def _scheme(cls, value: str, info: Any) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL")
        if parts.username or parts.password:
            raise ValueError("must not carry credentials; use key_file")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in ("authorization", "x-api-key", "api-key"):
                raise ValueError(f"{name} is set from the key file, not from config")
            if "\r" in header_value or "\n" in header_value:
                raise ValueError(f"header {name} contains a line break")
        return value

    @model_validator(mode="after")
    def _plain_http(self) -> _ProviderBase:
        from urllib.parse import urlsplit

        parts = urlsplit(self.base_url)
        if parts.scheme == "http":
            if not is_loopback(parts.hostname or ""):
                raise ValueError(
                    "base_url: http:// is refused for a non-loopback host; use https://"
                )
            if not self.allow_insecure_http:
                raise ValueError(
                    "base_url: http:// upstream refused; set allow_insecure_http: true for a "
                    "loopback test server"
                )
        return self


class OpenAIProvider(_ProviderBase):
    kind: Literal["openai"]
    base_url: str = "https://api.openai.com/v1"


class OpenAICompatibleProvider(_ProviderBase):
    """Any server that speaks OpenAI's API under its own base URL (vLLM, Together, ...)."""

    kind: Literal["openai_compatible"]


class AnthropicProvider(_ProviderBase):
    kind: Literal["anthropic"]
    base_url: str = "https://api.anthropic.com"
    anthropic_version: str = Field(
        "2023-06-01", description="Sent as anthropic-version when the client sends none."
    )


class AzureOpenAIProvider(_ProviderBase):
    """Azure OpenAI: the model name picks a deployment; the key goes in `api-key`."""

    kind: Literal["azure"]
    api_version: str = Field(
        description="The `api-version` query parameter, e.g. 2024-10-21.",
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?$",
    )


_PROVIDER_KINDS = frozenset({"openai", "openai_compatible", "anthropic", "azure"})

ProviderSettings = Annotated[
    OpenAIProvider | OpenAICompatibleProvider | AnthropicProvider | AzureOpenAIProvider,
    Field(discriminator="kind"),
]


class Route(_Strict):
    model: str = Field(
        min_length=1,
        max_length=256,
        description="Model name or glob (`*`, `?`, `[...]`) the client asks for.",
    )
    provider: str = Field(description="Name of a provider in `providers`.")
    upstream_model: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Name sent upstream instead (for Azure: the deployment). Exact routes only.",
    )


class CredentialSettings(_Strict):
    directory: Path = Field(
        description="Directory holding one key file per provider (a projected Secret in "
        "Kubernetes). Watched with inotify; changes apply without a restart."
    )


class RequestLimits(_Strict):
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024, description="Largest request body."
    )
    max_json_depth: int = Field(64, ge=4, le=512, description="Deepest JSON nesting accepted.")
    max_header_bytes: int = Field(
        8190, ge=1024, le=65536, description="Longest request line or header field."
    )
    max_response_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="Largest non-streamed upstream answer the sidecar will hold.",
    )
    max_sse_event_bytes: int = Field(
        1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Longest single event of a streamed answer; a longer one ends the stream "
        "with an error.",
    )
    memory_budget_bytes: int = Field(
        64 * 1024 * 1024,
        ge=64 * 1024,
        description="Request and response bodies held at once, all requests together; a "
        "request that would pass it gets a 503 with Retry-After before its body is read. "
        "A request body is charged twice its size (bytes and parsed model): 64 MiB keeps "
        "the sidecar well under its 256 Mi memory limit (benchmarks/README.md).",
    )
    allowed_extra_fields: list[str] = Field(
        default_factory=list,
        description="Top-level body fields accepted besides the provider's known parameters.",
    )
    forward_headers: list[str] = Field(
        default_factory=list,
        description="Extra client headers passed upstream. Credential headers "
        "(authorization, proxy-authorization, x-api-key, api-key, cookie), hop-by-hop "
        "headers, host and content-length can never be.",
    )

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> RequestLimits:
        if self.memory_budget_bytes < 2 * self.max_body_bytes:
            raise ValueError(
                "memory_budget_bytes must be at least twice max_body_bytes (a body is held "
                "as bytes and parsed), or a body of the largest size allowed could never "
                "be read"
            )
        return self

    @field_validator("forward_headers")
    @classmethod
    def _no_auth_headers(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(f"{name} can never be forwarded: it carries a credential")
            if name.lower() in _CONNECTION_HEADERS:
                raise ValueError(
                    f"{name} can never be forwarded: it is hop-by-hop, or addresses or "
                    "frames the request, and the sidecar sets its own"
                )
        return [name.lower() for name in value]


class IdentitySettings(_Strict):
    """Who this sidecar's app is. In Kubernetes the downward API supplies these through
    SIDEGATE_NAMESPACE, SIDEGATE_SERVICE_ACCOUNT and SIDEGATE_POD_NAME, used when the file
    leaves a field out."""

    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    service_account: str = Field(
        "default", pattern=r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$", max_length=253
    )
    pod: str = Field("", max_length=253, description="Pod name, for audit events.")
    tenant_header: str = Field(
        "x-sidegate-tenant",
        pattern=r"^[A-Za-z0-9-]{1,64}$",
        description="Request header that carries the tenant, for apps serving many customers.",
    )


class PolicySettings(_Strict):
    directory: Path | None = Field(
        None, description="Standalone: a directory of RBACPolicy YAML files (kubectl style)."
    )
    bundle_file: Path | None = Field(
        None, description="A signed bundle file the operator wrote (verified with trusted_keys)."
    )
    trusted_keys: list[str] = Field(
        default_factory=list,
        description="Public keys (`ed25519:<base64>`) a bundle must be signed with; required "
        "with `broker` and with `bundle_file`.",
    )
    cache_ttl_seconds: float = Field(
        30.0, ge=0, le=3600, description="How long a decision is reused; 0 disables the cache."
    )

    @field_validator("trusted_keys")
    @classmethod
    def _keys_parse(cls, value: list[str]) -> list[str]:
        for text in value:
            signing.decode_public_key(text)  # ValueError names what is wrong, not the key
        return value

    @model_validator(mode="after")
    def _one_source_at_most(self) -> PolicySettings:
        if self.directory is not None and self.bundle_file is not None:
            raise ValueError("set exactly one of policy.directory and policy.bundle_file")
        if self.bundle_file is not None and not self.trusted_keys:
            raise ValueError("policy.bundle_file needs policy.trusted_keys to verify it")
        return self


class BrokerSettings(_Strict):
    """Where the sidecar gets its keys, bundle, admin token and Redis settings in a cluster."""

    url: str = Field(
        description="The broker's HTTPS URL, e.g. https://sidegate-broker.sidegate-system.svc:8443."
    )
    ca_pem: str | None = Field(
        None, description="PEM of the CA that signed the broker's certificate."
    )
    ca_file: Path | None = Field(None, description="...or a file holding it.")
    token_file: Path = Field(
        Path("/var/run/sidegate/token/token"),
        description="The projected ServiceAccount token (audience sidegate), re-read per call.",
    )
    max_staleness_seconds: float = Field(
        300.0,
        ge=1,
        le=86400,
        description="Serve on the last delivery this long without reaching the broker, then "
        "answer 503 broker_unreachable.",
    )
    wait_seconds: float = Field(
        25.0, ge=1, le=300, description="How long one long-poll asks the broker to hold."
    )

    @field_validator("url")
    @classmethod
    def _https(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("must be an https:// URL")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("must be a plain https://host:port URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_ca(self) -> BrokerSettings:
        if self.ca_pem is not None and self.ca_file is not None:
            raise ValueError("set at most one of broker.ca_pem and broker.ca_file")
        return self


class RedisSettings(_Strict):
    url_file: Path | None = Field(
        None,
        description="File holding the Redis URL (redis://host:port/db or rediss://...); with "
        "`broker`, the broker delivers the URL and password instead.",
    )
    password_file: Path | None = Field(None, description="File holding the Redis password.")
    timeout_seconds: float = Field(
        0.25, gt=0, le=10, description="Per-call timeout; past it the fail mode applies."
    )
    key_prefix: str = Field("sidegate:", pattern=r"^[A-Za-z0-9:_.-]{0,64}$")


class RateLimitSettings(_Strict):
    backend: Literal["local", "redis"] = Field(
        "local", description="local: per sidecar process; redis: global across replicas."
    )
    fail_mode: Literal["open", "closed"] = Field(
        "open", description="When Redis is unreachable: serve (open) or answer 503 (closed)."
    )
    redis: RedisSettings | None = None
    local_max_keys: int = Field(
        100_000, ge=100, description="Most callers tracked by the local backend."
    )
    default_output_tokens: int = Field(
        1024,
        ge=0,
        description="Output tokens reserved when a request sets no max_tokens.",
    )

    @model_validator(mode="after")
    def _redis_needs_settings(self) -> RateLimitSettings:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("backend redis needs a redis section")
        return self


class AdminSettings(_Strict):
    port: int = Field(4001, ge=0, le=65535, description="Loopback port of the admin API.")
    token_file: Path | None = Field(
        None,
        description="File holding the admin bearer token; with `broker`, the broker delivers "
        "it instead.",
    )


class MetricsSettings(_Strict):
    """A listener that serves ``GET /metrics`` and nothing else, for Prometheus to scrape
    from outside the pod: the API and the admin API stay on loopback."""

    host: str = Field(
        # Every address (B104): the point of this listener is to be reachable by a scraper
        # outside the pod; it serves metrics only, no key or token is behind it.
        "0.0.0.0",  # noqa: S104  # nosec B104
        description="Address to listen on; 0.0.0.0 is every IPv4 address of the pod, `::` "
        "every address (IPv6 clusters).",
    )
    port: int = Field(9464, ge=1, le=65535, description="Port of the metrics listener.")
    max_connections: int = Field(
        64, ge=1, le=4096, description="Open scrape connections; past it new ones get a 503."
    )


class ObjectLockSettings(_Strict):
    mode: Literal["GOVERNANCE", "COMPLIANCE"] = Field(
        description="S3 Object Lock mode set on every uploaded segment."
    )
    retain_days: int = Field(ge=1, le=36500, description="Retention from the upload time.")


class S3Settings(_Strict):
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    prefix: str = Field("sidegate", max_length=512, pattern=r"^[A-Za-z0-9!_.*'()/-]*$")
    region: str | None = Field(
        None, description="AWS region; the standard chain's default when absent."
    )
    endpoint_url: str | None = Field(
        None,
        description="Another S3 endpoint (MinIO, a VPC endpoint). AWS credentials always "
        "come from the standard chain, never from this file.",
    )
    sse_kms_key_id: str | None = Field(None, description="Encrypt uploads with this KMS key.")
    object_lock: ObjectLockSettings | None = None
    base_backoff_seconds: float = Field(0.5, gt=0, le=60)
    max_backoff_seconds: float = Field(60.0, gt=0, le=3600, description="Cap of the retry wait.")


class AuditSettings(_Strict):
    spool_directory: Path = Field(description="Local directory of the durable spool.")
    max_spool_bytes: int = Field(
        1024**3, ge=64 * 1024, description="Bound of the spool; when reached, fail_mode applies."
    )
    segment_max_bytes: int = Field(8 * 1024**2, ge=1024, description="Seal a segment at this size.")
    segment_max_age_seconds: float = Field(60.0, gt=0, le=86400, description="...or at this age.")
    flush_interval_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Group commit in async mode: how long events gather before one fsync.",
    )
    # acknowledged by default: a compliance buyer's reading of "every request is audited"
    # is that no answer leaves without its event on disk (Vault's audit devices promise it).
    durability: Literal["acknowledged", "async"] = Field(
        "acknowledged",
        description="acknowledged: no response completes (its whole body, or its stream's "
        "last event) before its audit event is fsync'd; a request whose event cannot be "
        "written is not answered. async: the response does not wait; a crash may lose the "
        "events of the last few milliseconds.",
    )
    digest_interval_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="A signed digest is written at least this often, even when idle: a "
        "verifier sees a trail whose last digest is older (and not final) as cut short.",
    )
    fail_mode: Literal["open", "closed"] = Field(
        "closed",
        description="Spool full or unwritable: closed refuses LLM requests (503); open serves "
        "them and counts dropped events.",
    )
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, le=600, description="On SIGTERM, how long to keep uploading sealed segments."
    )
    s3: S3Settings | None = Field(None, description="Where segments go; kept locally when absent.")


class LogSettings(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"
    access_log: bool = Field(False, description="One log line per request (no bodies).")


class SidecarSettings(_Strict):
    listen: ListenSettings = Field(default_factory=ListenSettings)
    broker: BrokerSettings | None = Field(
        None, description="Cluster: keys, bundle, admin token and Redis from the broker."
    )
    credentials: CredentialSettings | None = Field(
        None, description="Key files; required without `broker`, refused with it."
    )
    providers: dict[Annotated[str, Field(pattern=_PROVIDER_NAME)], ProviderSettings] = Field(
        min_length=1
    )
    routes: list[Route] = Field(min_length=1)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    logging: LogSettings = Field(default_factory=LogSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    policy: PolicySettings
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    admin: AdminSettings | None = Field(None, description="The admin API; off when absent.")
    metrics: MetricsSettings | None = Field(
        None,
        description="A scrapeable /metrics listener; off when absent (the API's own "
        "/metrics on the loopback port is always there).",
    )
    audit: AuditSettings | None = Field(None, description="The audit trail; off when absent.")

    @model_validator(mode="after")
    def _sources(self) -> SidecarSettings:
        """With a broker, every secret and the bundle come from it (memory only); without
        one, each comes from its file."""
        policy, redis = self.policy, self.rate_limits.redis
        files = {
            "credentials": self.credentials is not None,
            "policy.directory": policy.directory is not None,
            "policy.bundle_file": policy.bundle_file is not None,
            "admin.token_file": self.admin is not None and self.admin.token_file is not None,
            "rate_limits.redis.url_file": redis is not None and redis.url_file is not None,
            "rate_limits.redis.password_file": redis is not None
            and redis.password_file is not None,
        }
        if self.broker is not None:
            given = [name for name, present in files.items() if present]
            if given:
                raise ValueError(
                    f"with broker, leave out {', '.join(given)}: the broker delivers them"
                )
            if not policy.trusted_keys:
                raise ValueError("broker needs policy.trusted_keys to verify bundles")
            return self
        if not files["credentials"]:
            raise ValueError("credentials: required without broker")
        if not (files["policy.directory"] or files["policy.bundle_file"]):
            raise ValueError("set exactly one of policy.directory and policy.bundle_file")
        if self.admin is not None and not files["admin.token_file"]:
            raise ValueError("admin.token_file: required without broker")
        if redis is not None and not files["rate_limits.redis.url_file"]:
            raise ValueError("rate_limits.redis.url_file: required without broker")
        return self

    @model_validator(mode="after")
    def _ports_differ(self) -> SidecarSettings:
        if self.metrics is None:
            return self
        taken = {"listen.port": self.listen.port}
        if self.admin is not None:
            taken["admin.port"] = self.admin.port
        for name, port in taken.items():
            if port == self.metrics.port:
                raise ValueError(f"metrics.port {port} is also {name}: give each its own")
        return self

    @model_validator(mode="after")
    def _routes_name_providers(self) -> SidecarSettings:
        for index, route in enumerate(self.routes):
            if route.provider not in self.providers:
                raise ValueError(
                    f"routes[{index}].provider: {route.provider!r} is not in providers "
                    f"({', '.join(sorted(self.providers))})"
                )
            if route.upstream_model and any(c in route.model for c in "*?["):
                raise ValueError(
                    f"routes[{index}].upstream_model: only an exact model name can be renamed"
                )
        return self


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for error in exc.errors(include_url=False, include_input=False):
        location = list(error["loc"])
        # A tagged union puts the tag in the path (providers.openai.openai.base_url); the
        # user wrote no such key, so drop it.
        if len(location) >= 3 and location[0] == "providers" and location[2] in _PROVIDER_KINDS:
            del location[2]
        where = ".".join(str(part) for part in location) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key missing"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


_IDENTITY_ENVIRONMENT = {
    "namespace": "SIDEGATE_NAMESPACE",
    "service_account": "SIDEGATE_SERVICE_ACCOUNT",
    "pod": "SIDEGATE_POD_NAME",
}


def load(path: Path, environ: Mapping[str, str] | None = None) -> SidecarSettings:
    """Read and validate a config file; relative paths in it are relative to the file.

    ``environ`` (the process environment, from main()) fills identity fields the file
    leaves out: that is how the downward API reaches the sidecar."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise errors.ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    return parse(text, str(path), path.parent, environ)


def parse(
    text: str, source: str, base: Path, environ: Mapping[str, str] | None = None
) -> SidecarSettings:
    """Validate config text read from ``source`` (a file, or the environment variable the
    injector fills); relative paths are relative to ``base``."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise errors.ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise errors.ConfigError(f"{source}: expected a mapping at the top level")
    identity = data.get("identity")
    if environ and (identity is None or isinstance(identity, dict)):
        found = {
            key: environ[name] for key, name in _IDENTITY_ENVIRONMENT.items() if environ.get(name)
        }
        data["identity"] = {**found, **(identity or {})}
    try:
        settings = SidecarSettings.model_validate(data)
    except ValidationError as exc:
        raise errors.ConfigError(format_validation_error(exc, source)) from None
    return _resolve_paths(settings, base)


def _resolve_paths(settings: SidecarSettings, base: Path) -> SidecarSettings:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    providers = {
        name: provider.model_copy(
            update={
                "tls": provider.tls.model_copy(
                    update={
                        "ca_file": absolute(provider.tls.ca_file) if provider.tls.ca_file else None
                    }
                )
            }
        )
        for name, provider in settings.providers.items()
    }
    credentials = settings.credentials
    if credentials is not None:
        credentials = credentials.model_copy(update={"directory": absolute(credentials.directory)})
    broker = settings.broker
    if broker is not None:
        broker = broker.model_copy(
            update={
                "token_file": absolute(broker.token_file),
                "ca_file": absolute(broker.ca_file) if broker.ca_file else None,
            }
        )
    policy = settings.policy.model_copy(
        update={
            "directory": absolute(settings.policy.directory) if settings.policy.directory else None,
            "bundle_file": absolute(settings.policy.bundle_file)
            if settings.policy.bundle_file
            else None,
        }
    )
    rate_limits = settings.rate_limits
    if rate_limits.redis is not None:
        redis = rate_limits.redis
        rate_limits = rate_limits.model_copy(
            update={
                "redis": redis.model_copy(
                    update={
                        "url_file": absolute(redis.url_file) if redis.url_file else None,
                        "password_file": absolute(redis.password_file)
                        if redis.password_file
                        else None,
                    }
                )
            }
        )
    admin = settings.admin
    if admin is not None:
        admin = admin.model_copy(
            update={"token_file": absolute(admin.token_file) if admin.token_file else None}
        )
    audit = settings.audit
    if audit is not None:
        audit = audit.model_copy(update={"spool_directory": absolute(audit.spool_directory)})
    return settings.model_copy(
        update={
            "providers": providers,
            "broker": broker,
            "credentials": credentials,
            "policy": policy,
            "rate_limits": rate_limits,
            "admin": admin,
            "audit": audit,
        }
    )
