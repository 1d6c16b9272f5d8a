"""How to address each kind of provider: URL, auth header, TLS, timeouts.

One ``Upstream`` per configured provider, built once at start-up; the per-request work is
string concatenation and a small dict.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import aiohttp

from sidegate import errors, tls
from sidegate.redact import Secret
from sidegate.sidecar import endpoints, settings

_AZURE_DEPLOYMENT_APIS = frozenset({endpoints.CHAT, endpoints.COMPLETIONS, endpoints.EMBEDDINGS})


@dataclasses.dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    kind: str
    dialect: endpoints.Dialect
    base_url: str
    ssl_context: ssl.SSLContext | None  # None only for an allowed loopback http:// URL
    timeout: aiohttp.ClientTimeout
    static_headers: Mapping[str, str]
    key_file: str
    api_version: str | None = None  # Azure
    anthropic_version: str | None = None  # Anthropic default when the client sends none

    def url(self, endpoint: endpoints.Endpoint, model: str) -> str:
        if self.kind == "azure":
            if model in (".", ".."):  # a dot segment: the URL would climb out of deployments/
                raise errors.InvalidRequest(
                    f"{model!r} is not an Azure deployment name",
                    param="model",
                    code="invalid_model",
                )
            deployment = quote(model, safe="")
            return (
                f"{self.base_url}/openai/deployments/{deployment}{endpoint.path}"
                f"?api-version={self.api_version}"
            )
        if self.kind == "anthropic":
            return f"{self.base_url}/v1{endpoint.path}"
        return f"{self.base_url}{endpoint.path}"

    def auth_headers(self, key: Secret) -> dict[str, str]:
        if self.kind == "anthropic":
            return {"x-api-key": key.reveal()}
        if self.kind == "azure":
            return {"api-key": key.reveal()}
        return {"authorization": "Bearer " + key.reveal()}

    def serves(self, endpoint: endpoints.Endpoint) -> bool:
        if self.kind == "azure" and endpoint not in _AZURE_DEPLOYMENT_APIS:
            return False  # Azure OpenAI deployments serve no moderations or Responses
        return endpoint.dialect == self.dialect


def build(name: str, config: settings.ProviderSettings) -> Upstream:
    secure = urlsplit(config.base_url).scheme == "https"
    context = tls.client_context(config.tls.min_version, config.tls.ca_file) if secure else None
    return Upstream(
        name=name,
        kind=config.kind,
        dialect="anthropic" if config.kind == "anthropic" else "openai",
        base_url=config.base_url,
        ssl_context=context,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=config.timeouts.connect, sock_read=config.timeouts.read
        ),
        static_headers=dict(config.headers),
        key_file=config.key_file or name,
        api_version=getattr(config, "api_version", None),
        anthropic_version=getattr(config, "anthropic_version", None),
    )


def build_all(providers: Mapping[str, settings.ProviderSettings]) -> dict[str, Upstream]:
    return {name: build(name, config) for name, config in providers.items()}
