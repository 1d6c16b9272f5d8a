"""The ``RBACPolicy`` resource: who may call which model, and how often.

These models are the source of truth for the CRD (``crds/rbacpolicy.yaml`` is generated
from them) and for the YAML files of standalone mode. Field names are camelCase, as in every
Kubernetes API. ``docs/policies.md`` explains the semantics; keep the descriptions here
(which become ``kubectl explain`` text) in step with it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

API_VERSION = "sidegate.io/v1alpha1"
KIND = "RBACPolicy"

Action = Literal[
    "chat",
    "completions",
    "embeddings",
    "messages",
    "messages.count_tokens",
    "moderations",
    "responses",
    "models.list",
]
ACTIONS: tuple[Action, ...] = (
    "chat",
    "completions",
    "embeddings",
    "messages",
    "messages.count_tokens",
    "moderations",
    "responses",
    "models.list",
)

# Kubernetes names: RFC 1123 subdomain for objects, DNS label for namespaces.
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A tenant is sent by the app in a header: a short token, nothing that could split a header
# or a log line, or look like a path.
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
# Model globs: the characters of real model names plus fnmatch's * ? [ ] and !.
_MODEL_PATTERN = r"^[A-Za-z0-9._:/@*?\[\]!-]{1,256}$"


class _Model(BaseModel):
    # strict: "3" is not 3 and "true" is not true; a policy says exactly what it means.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class ServiceAccountSubject(_Model):
    kind: Literal["ServiceAccount"] = Field(
        description="ServiceAccount (one service account) or Namespace (every caller in it)."
    )
    name: str = Field(
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="A service account in the policy's own namespace.",
    )


class NamespaceSubject(_Model):
    kind: Literal["Namespace"] = Field(
        description="ServiceAccount (one service account) or Namespace (every caller in it)."
    )
    name: str = Field(
        max_length=63,
        pattern=_DNS_LABEL,
        description="Every caller in this namespace. Must be the policy's own namespace.",
    )


Subject = Annotated[ServiceAccountSubject | NamespaceSubject, Field(discriminator="kind")]

# A tenant is a claim the application makes about its own customer; it is never a subject
# (v1alpha1 had a Tenant subject: any caller that sent the header got the policy's grant).
_TENANT_SUBJECT_REMOVED = (
    "subjects of kind Tenant were removed: a tenant is a claim the application makes, so it "
    "cannot grant access. Name the service account (or namespace) as the subject, and use "
    "rules[].tenants to scope a rule to tenants and allowedTenants to restrict the claims "
    "(docs/policies.md, CHANGELOG.md)"
)

TenantName = Annotated[str, Field(max_length=63, pattern=TENANT_PATTERN)]


class Rule(_Model):
    effect: Literal["Allow", "Deny"] = Field(
        description="Allow grants; Deny refuses and wins over every Allow."
    )
    models: list[Annotated[str, Field(pattern=_MODEL_PATTERN)]] = Field(
        min_length=1,
        max_length=256,
        description="Model names or globs (*, ?, [...]), matched case-insensitively.",
    )
    actions: list[Action] = Field(
        default_factory=lambda: list(ACTIONS),
        min_length=1,
        description="API actions the rule covers; all of them when omitted.",
    )
    tenants: list[TenantName] | None = Field(
        None,
        min_length=1,
        max_length=10_000,
        description="Only requests claiming one of these tenants (case-sensitive) match the "
        "rule; every request of the policy's subjects when omitted. Narrows, never widens: "
        "the policy still applies only to its subjects.",
    )


class Limits(_Model):
    requests_per_minute: int | None = Field(
        None, alias="requestsPerMinute", ge=1, le=10_000_000, description="Requests a minute."
    )
    tokens_per_minute: int | None = Field(
        None,
        alias="tokensPerMinute",
        ge=1,
        le=10_000_000_000,
        description="Input plus output tokens a minute (reserved before, settled after).",
    )
    max_concurrent: int | None = Field(
        None, alias="maxConcurrent", ge=1, le=100_000, description="Requests in flight at once."
    )


# Kubernetes prunes fields its schema does not know (unless the client asks for strict
# field validation): a misspelt limit would leave an override that limits nothing. The
# API server evaluates this rule; the validator below is the same rule for the models.
_SETS_A_LIMIT = (
    "has(self.requestsPerMinute) || has(self.tokensPerMinute) || has(self.maxConcurrent)"
)


class TenantOverride(Limits):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _SETS_A_LIMIT,
                    "message": "a tenant override sets at least one of requestsPerMinute, "
                    "tokensPerMinute and maxConcurrent",
                }
            ]
        }
    )

    tenant: str = Field(
        max_length=63,
        pattern=TENANT_PATTERN,
        description="The tenant this sub-budget applies to, inside the service account's own.",
    )

    @model_validator(mode="after")
    def _sets_a_limit(self) -> TenantOverride:
        if not self.model_fields_set & {
            "requests_per_minute",
            "tokens_per_minute",
            "max_concurrent",
        }:
            raise ValueError(
                "a tenant override sets at least one of requestsPerMinute, tokensPerMinute "
                "and maxConcurrent"
            )
        return self


class RateLimits(Limits):
    tenant_overrides: list[TenantOverride] = Field(
        default_factory=list,
        alias="tenantOverrides",
        max_length=10_000,
        # One entry per tenant: the API server refuses a second (and server-side apply
        # merges entries by tenant); the validator below says the same for the models.
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["tenant"],
        },
        description="Per-tenant sub-budgets: requests claiming the tenant must also fit "
        "these limits. They never add to the caller's own limits, which hold in aggregate "
        "over every tenant it claims; a field left out sets no sub-limit.",
    )

    @field_validator("tenant_overrides")
    @classmethod
    def _one_override_per_tenant(cls, value: list[TenantOverride]) -> list[TenantOverride]:
        seen: set[str] = set()
        for override in value:
            if override.tenant in seen:
                raise ValueError(f"tenant {override.tenant!r} has two overrides")
            seen.add(override.tenant)
        return value


class Retention(_Model):
    provider_storage: Literal["Allowed", "Forbidden"] = Field(
        "Allowed",
        alias="providerStorage",
        description="Forbidden: the provider may keep nothing of the subjects' requests. A "
        "Responses API request that leaves `store` out is sent with `store: false`; one that "
        "asks for `store: true` or `background: true`, or a chat completion with "
        "`store: true`, is refused (403 store_forbidden). Applies if any of the caller's "
        "policies says so.",
    )


class RBACPolicySpec(_Model):
    subjects: list[Subject] = Field(
        default_factory=list,
        max_length=1000,
        description="Who the policy applies to. An empty list applies to no one. Each "
        "subject (kind and name) at most once.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["kind", "name"],
        },
    )
    rules: list[Rule] = Field(
        default_factory=list,
        max_length=1000,
        description="Allow and deny rules.",
        json_schema_extra={"x-kubernetes-list-type": "atomic"},
    )
    allowed_tenants: list[TenantName] | None = Field(
        None,
        alias="allowedTenants",
        max_length=10_000,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="The tenants the subjects may claim in the tenant header; a request "
        "claiming any other is refused (tenant_not_allowed). Requests that claim no tenant "
        "are unaffected. Every applicable policy's list applies. Any tenant when omitted. "
        "Each tenant at most once.",
    )
    rate_limits: RateLimits | None = Field(
        None,
        alias="rateLimits",
        description="Limits for each caller (service account) the policy applies to, in "
        "aggregate over every tenant it claims.",
    )
    retention: Retention | None = Field(
        None, description="What the provider may keep of the subjects' requests."
    )

    @field_validator("subjects")
    @classmethod
    def _each_subject_once(cls, value: list[Subject]) -> list[Subject]:
        seen: set[tuple[str, str]] = set()
        for subject in value:
            if (subject.kind, subject.name) in seen:
                raise ValueError(f"{subject.kind} {subject.name!r} is listed twice")
            seen.add((subject.kind, subject.name))
        return value

    @field_validator("allowed_tenants")
    @classmethod
    def _each_tenant_once(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("a tenant is listed twice")
        return value

    @model_validator(mode="before")
    @classmethod
    def _no_tenant_subjects(cls, data: object) -> object:
        if isinstance(data, dict):
            for subject in data.get("subjects") or ():
                if isinstance(subject, dict) and subject.get("kind") == "Tenant":
                    raise ValueError(_TENANT_SUBJECT_REMOVED)
        return data


class ObjectMeta(_Model):
    # Kubernetes adds many fields (uid, resourceVersion, managedFields, ...); a policy read
    # back from the cluster must still validate, so only these are checked.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True, strict=True)

    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN)
    namespace: str = Field("default", max_length=63, pattern=_DNS_LABEL)
    generation: int | None = None


class Condition(_Model):
    type: str = Field(description="The condition's type: Ready.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(
        "",
        description="Why, in one CamelCase word: Compiled (in force, in the namespace's "
        "bundle) or Invalid (refused; what was in force stays).",
    )
    message: str = Field(
        "", description="For a person: the bundle it is in, or what is wrong with the spec."
    )
    last_transition_time: str | None = Field(
        None, alias="lastTransitionTime", description="When the status last changed (RFC 3339)."
    )


class RBACPolicyStatus(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready (True, or False with reason Invalid).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(
        None, alias="observedGeneration", description="The generation the status describes."
    )
    rule_count: int | None = Field(None, alias="ruleCount", description="Rules in the spec.")


class RBACPolicy(_Model):
    api_version: Literal["sidegate.io/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["RBACPolicy"]
    metadata: ObjectMeta
    spec: RBACPolicySpec
    status: RBACPolicyStatus | None = None

    @model_validator(mode="after")
    def _subjects_stay_in_namespace(self) -> RBACPolicy:
        # A policy grants only within its own namespace: whoever may write policies in one
        # namespace must not be able to grant or throttle callers in another.
        for index, subject in enumerate(self.spec.subjects):
            if isinstance(subject, NamespaceSubject) and subject.name != self.metadata.namespace:
                raise ValueError(
                    f"spec.subjects[{index}]: namespace {subject.name!r} is not the policy's "
                    f"namespace {self.metadata.namespace!r}"
                )
        return self

    @property
    def key(self) -> tuple[str, str]:
        return (self.metadata.namespace, self.metadata.name)


def is_valid_tenant(value: str) -> bool:
    # fullmatch: with match, the pattern's $ also matches before a final newline ("a\n"),
    # which the policy schema's pattern (pydantic's, and the CRD's) refuses.
    return _TENANT.fullmatch(value) is not None


_TENANT = re.compile(TENANT_PATTERN)
