"""Sidegate's exception tree.

Every error Sidegate raises on purpose is a ``SidegateError``; the sidecar's error middleware
is the one place that turns them into HTTP answers (OpenAI's error shape, or Anthropic's on
``/v1/messages``). Foreign exceptions (aiohttp, ssl, pydantic) are translated once, at the
seam where they occur, so nothing below the middleware needs to know about HTTP.

    SidegateError
    ├── ConfigError             a config file is missing, unreadable or invalid (start-up only)
    ├── CredentialRejected      a new credential file is empty, unreadable or malformed
    ├── BundleRejected          a policy bundle or policy file failed validation
    ├── DeliveryRejected        a broker answer is not a valid delivery for this sidecar
    └── RequestError            anything answered to a client, carries status/type/code
        ├── InvalidRequest      400: the body or a header is not acceptable
        │   └── UnknownField    400: a top-level field that is neither known nor allowed
        ├── RequestTimeout      408: the request body stopped arriving
        ├── ClientClosedRequest 499: the client hung up before its body was read
        ├── UnsupportedMediaType 415
        ├── PayloadTooLarge     413
        ├── NotFound            404: unknown path, or a model no route serves
        ├── MisdirectedRequest  421: a Host header this sidecar does not answer to
        ├── PolicyDenied        403
        ├── RateLimited         429
        ├── NotReady            503: a credential or policy has not been loaded yet
        │   └── BrokerUnreachable 503: the broker's last answer is older than allowed
        ├── Overloaded          503: the memory budget is spent; Retry-After says when to retry
        ├── ShuttingDown        503: the sidecar cut the request at the end of its shutdown grace
        └── UpstreamError       502: the provider could not be reached or answered nonsense
            └── UpstreamTimeout 504
"""

from __future__ import annotations

from collections.abc import Mapping


class SidegateError(Exception):
    """Base of every error Sidegate raises deliberately."""


class ConfigError(SidegateError):
    """A configuration file is missing, unreadable or invalid."""


class CredentialRejected(SidegateError):
    """A credential file was read but its content is not acceptable.

    The message names the file and the reason, never the content.
    """


class BundleRejected(SidegateError):
    """A policy bundle or policy source is invalid; the policy in force stays."""


class DeliveryRejected(SidegateError):
    """A broker answer was received but is not a valid delivery; the last good one stays."""


class RequestError(SidegateError):
    """An error that is answered to the client as JSON.

    ``message`` must be safe to show to the caller: it never holds a secret, a traceback or
    another tenant's data.
    """

    status: int = 400
    error_type: str = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers: Mapping[str, str] = headers or {}


class InvalidRequest(RequestError):
    status = 400
    code = "invalid_request"


class UnknownField(InvalidRequest):
    code = "unknown_field"


class RequestTimeout(RequestError):
    status = 408
    code = "body_timeout"


class ClientClosedRequest(RequestError):
    """nginx's 499: nobody is left to answer; recorded as such, never logged as a fault."""

    status = 499
    code = "client_closed_request"


class UnsupportedMediaType(RequestError):
    status = 415
    code = "unsupported_media_type"


class PayloadTooLarge(RequestError):
    status = 413
    code = "payload_too_large"


class NotFound(RequestError):
    status = 404
    error_type = "not_found_error"
    code = "not_found"


class MisdirectedRequest(RequestError):
    status = 421
    code = "host_not_allowed"


class PolicyDenied(RequestError):
    status = 403
    error_type = "permission_error"
    code = "policy_denied"


class RateLimited(RequestError):
    status = 429
    error_type = "rate_limit_error"
    code = "rate_limited"


class InternalError(RequestError):
    """Something the sidecar did not expect: the details are in its log, never in the
    answer."""

    status = 500
    error_type = "api_error"
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error")


class NotReady(RequestError):
    status = 503
    error_type = "api_error"
    code = "not_ready"


class BrokerUnreachable(NotReady):
    code = "broker_unreachable"


class Overloaded(RequestError):
    status = 503
    error_type = "overloaded_error"
    code = "overloaded"


class ShuttingDown(RequestError):
    status = 503
    error_type = "api_error"
    code = "sidecar_shutdown"


class UpstreamError(RequestError):
    status = 502
    error_type = "api_error"
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
