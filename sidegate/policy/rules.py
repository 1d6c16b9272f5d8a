"""Deciding: may this caller use this model for this action, and within which limits?

Semantics (docs/policies.md has the long form):

* Deny by default: without a matching Allow there is no access.
* A matching Deny wins over any number of Allows.
* A policy applies to a caller when one of its subjects matches: the caller's service
  account or its namespace (within the policy's namespace). A tenant is a claim the
  application makes about its own customer: it never makes a policy apply, so it can
  neither grant access nor escape a limit.
* A tenant claim can only narrow: a policy's ``allowedTenants`` refuses other claims
  (``tenant_not_allowed``), and a rule with ``tenants`` matches only those claims (so a
  tenant Deny denies that tenant).
* Limits: every applicable policy's limits count; for each dimension the tightest applies.
  They bind the service account in aggregate, whatever tenant it claims. A tenant override
  is a sub-budget inside that aggregate: a request claiming the tenant must fit both.
* Nothing depends on the order of policies or rules.

``PolicyIndex`` compiles a bundle once: subjects into dict indexes, each rule's globs into
exact names, prefixes and suffixes (a regex only for the rest), so a decision touches only
the caller's policies.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Iterable
from typing import NamedTuple

from sidegate.policy import bundle as bundles
from sidegate.policy import models

# Stable reason codes: part of the API (403 bodies, explain, metrics, audit).
ALLOWED = "allowed"
DENIED_BY_RULE = "denied_by_rule"
NO_MATCHING_ALLOW = "no_matching_allow"
NO_POLICY = "no_policy_for_caller"
TENANT_NOT_ALLOWED = "tenant_not_allowed"
DENIALS = frozenset({DENIED_BY_RULE, NO_MATCHING_ALLOW, NO_POLICY, TENANT_NOT_ALLOWED})
# A request asking the provider to keep what a retention policy forbids it to keep.
STORE_FORBIDDEN = "store_forbidden"


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    namespace: str
    service_account: str
    tenant: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RuleMatch:
    policy: str  # namespace/name
    rule: int  # index in the policy's rules
    effect: str
    pattern: str  # the glob that matched


@dataclasses.dataclass(frozen=True, slots=True)
class EffectiveLimits:
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    # dimension → the policy whose limit won, for explain
    sources: tuple[tuple[str, str], ...] = ()

    @property
    def any(self) -> bool:
        return bool(self.requests_per_minute or self.tokens_per_minute or self.max_concurrent)


NO_LIMITS = EffectiveLimits()


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    policy: str | None  # the deciding policy: the first deny, else the first allow
    limits: EffectiveLimits  # the service account's, in aggregate over its tenants
    matches: tuple[RuleMatch, ...] = ()
    # The claimed tenant's sub-budget (its overrides), checked as well as ``limits``.
    tenant_limits: EffectiveLimits = NO_LIMITS
    # The first applicable policy (by namespace/name) whose retention forbids provider
    # storage; None when none does.
    storage_forbidden_by: str | None = None


_GLOB_SPECIALS = frozenset("*?[")
_LimitTuple = tuple[int | None, int | None, int | None]


@functools.lru_cache(maxsize=4096)
def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for the globs that are not a plain name, prefix or suffix. Compiled on
    first use and shared by every rule and bundle with the same globs: compiling 10,000
    policies' worth of regexes up front would make reloads take seconds."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class _CompiledRule(NamedTuple):
    """A rule's globs, casefolded and sorted by shape so most matches are one C call.
    (Named tuples, not frozen dataclasses: compiling 10,000 policies makes 30,000 of these,
    and a frozen dataclass's __init__ costs several times a tuple's.)"""

    position: int  # in the policy's rules
    effect: str
    patterns: tuple[str, ...]  # as written, for explain
    actions: frozenset[str]
    everything: bool  # a bare "*"
    exact: frozenset[str]
    prefixes: tuple[str, ...]  # "gpt-4o*"
    suffixes: tuple[str, ...]  # "*-preview"
    others: tuple[str, ...]  # anything else ("claude-*-opus*", "gpt-?"): a regex
    tenants: frozenset[str] | None  # the claims the rule is scoped to; None: every request

    def matches(self, folded_model: str, tenant: str | None) -> bool:
        return (self.tenants is None or (tenant is not None and tenant in self.tenants)) and (
            self.everything
            or folded_model in self.exact
            or (bool(self.prefixes) and folded_model.startswith(self.prefixes))
            or (bool(self.suffixes) and folded_model.endswith(self.suffixes))
            or (bool(self.others) and _glob_regex(self.others).match(folded_model) is not None)
        )

    def matching_pattern(self, model: str) -> str:
        return next(p for p in self.patterns if fnmatch.fnmatchcase(model.casefold(), p.casefold()))


def _compile_rule(index: int, rule: models.Rule) -> _CompiledRule:
    exact: set[str] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    others: list[str] = []
    everything = False
    for pattern in rule.models:
        folded = pattern.casefold()
        body = folded.strip("*")
        if folded == "*":
            everything = True
        elif _GLOB_SPECIALS.isdisjoint(folded):
            exact.add(folded)
        elif _GLOB_SPECIALS.isdisjoint(body) and folded == body + "*":
            prefixes.append(body)
        elif _GLOB_SPECIALS.isdisjoint(body) and folded == "*" + body:
            suffixes.append(body)
        else:
            others.append(folded)
    return _CompiledRule(
        index,
        rule.effect,
        tuple(rule.models),
        frozenset(rule.actions),
        everything,
        frozenset(exact),
        tuple(prefixes),
        tuple(suffixes),
        tuple(others),
        frozenset(rule.tenants) if rule.tenants is not None else None,
    )


class _CompiledPolicy(NamedTuple):
    key: str
    denies: tuple[_CompiledRule, ...]
    allows: tuple[_CompiledRule, ...]
    # Plain tuples (requests, tokens, concurrent), not models: ten thousand policies' worth
    # of objects the garbage collector would otherwise rescan on every full collection.
    limits: _LimitTuple | None
    overrides: dict[str, _LimitTuple]
    allowed_tenants: frozenset[str] | None
    storage_forbidden: bool


def _limit_tuple(limits: models.Limits) -> _LimitTuple:
    return (limits.requests_per_minute, limits.tokens_per_minute, limits.max_concurrent)


def _compile(policy: bundles.BundlePolicy) -> _CompiledPolicy:
    compiled = [_compile_rule(i, rule) for i, rule in enumerate(policy.rules)]
    limits = policy.rate_limits
    return _CompiledPolicy(
        key=policy.key,
        denies=tuple(r for r in compiled if r.effect == "Deny"),
        allows=tuple(r for r in compiled if r.effect == "Allow"),
        limits=_limit_tuple(limits) if limits else None,
        overrides={o.tenant: _limit_tuple(o) for o in limits.tenant_overrides} if limits else {},
        allowed_tenants=frozenset(policy.allowed_tenants)
        if policy.allowed_tenants is not None
        else None,
        storage_forbidden=policy.retention is not None
        and policy.retention.provider_storage == "Forbidden",
    )


_DIMENSIONS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")


def _tightest(limits: Iterable[tuple[_LimitTuple, str]]) -> EffectiveLimits:
    best: dict[str, tuple[int, str]] = {}
    for values, source in limits:
        for position, dimension in enumerate(_DIMENSIONS):
            value = values[position]
            if value is not None and (dimension not in best or value < best[dimension][0]):
                best[dimension] = (value, source)
    if not best:
        return NO_LIMITS
    return EffectiveLimits(
        requests_per_minute=best.get("requests_per_minute", (None, ""))[0],
        tokens_per_minute=best.get("tokens_per_minute", (None, ""))[0],
        max_concurrent=best.get("max_concurrent", (None, ""))[0],
        sources=tuple((dimension, source) for dimension, (_, source) in sorted(best.items())),
    )


def _limits_for(policies: Iterable[_CompiledPolicy]) -> EffectiveLimits:
    """The caller's own limits: the same whatever tenant it claims."""
    return _tightest((p.limits, p.key) for p in policies if p.limits is not None)


def _tenant_limits_for(policies: Iterable[_CompiledPolicy], tenant: str | None) -> EffectiveLimits:
    """The claimed tenant's sub-budget: its overrides, tightest per dimension."""
    if tenant is None:
        return NO_LIMITS
    return _tightest((p.overrides[tenant], p.key) for p in policies if tenant in p.overrides)


class PolicyIndex:
    """A compiled bundle. Immutable; a new bundle makes a new index.

    Built from any iterable of policies, so a large bundle can be compiled while it is read
    without ever holding all its parsed models at once."""

    def __init__(self, bundle: bundles.PolicyBundle) -> None:
        self._build(bundle.hash, bundle.policies)

    @classmethod
    def from_policies(cls, hash_: str, policies: Iterable[bundles.BundlePolicy]) -> PolicyIndex:
        index = cls.__new__(cls)
        index._build(hash_, policies)
        return index

    def _build(self, hash_: str, policies: Iterable[bundles.BundlePolicy]) -> None:
        self.hash = hash_
        self.size = 0
        self._by_service_account: dict[tuple[str, str], list[_CompiledPolicy]] = {}
        self._by_namespace: dict[str, list[_CompiledPolicy]] = {}
        for policy in policies:  # sorted by namespace/name in every bundle
            self.size += 1
            compiled = _compile(policy)
            for subject in policy.subjects:
                if isinstance(subject, models.ServiceAccountSubject):
                    index = self._by_service_account.setdefault(
                        (policy.namespace, subject.name), []
                    )
                else:
                    index = self._by_namespace.setdefault(policy.namespace, [])
                if not index or index[-1] is not compiled:  # a subject listed twice
                    index.append(compiled)

    def dismantle(self) -> None:
        """Empty the index a policy at a time. Freeing a large index in one go is a single
        deallocation cascade that holds the interpreter for tens of milliseconds; popping
        entries in a Python loop lets other threads (the event loop) run in between."""
        for table in (self._by_service_account, self._by_namespace):
            while table:
                table.popitem()

    def applicable(self, caller: Caller) -> list[_CompiledPolicy]:
        """The caller's policies, in namespace/name order, each once. The tenant plays no
        part: which policies apply is decided by who the caller is, not what it claims."""
        found = [
            *self._by_service_account.get((caller.namespace, caller.service_account), ()),
            *self._by_namespace.get(caller.namespace, ()),
        ]
        if len(found) > 1:
            unique = {id(p): p for p in found}
            found = sorted(unique.values(), key=lambda p: p.key)
        return found

    def decide(self, caller: Caller, model: str, action: str, *, explain: bool = False) -> Decision:
        policies = self.applicable(caller)
        folded = model.casefold()
        tenant = caller.tenant
        limits = _limits_for(policies)
        tenant_limits = _tenant_limits_for(policies, tenant)
        forbidding = next((p.key for p in policies if p.storage_forbidden), None)
        if not policies:
            return Decision(False, NO_POLICY, None, limits, storage_forbidden_by=forbidding)
        if tenant is not None:
            for policy in policies:
                if policy.allowed_tenants is not None and tenant not in policy.allowed_tenants:
                    return Decision(
                        False,
                        TENANT_NOT_ALLOWED,
                        policy.key,
                        limits,
                        (),
                        tenant_limits,
                        storage_forbidden_by=forbidding,
                    )
        matches: list[RuleMatch] = []
        deciding_deny: str | None = None
        deciding_allow: str | None = None
        for policy in policies:
            for rule in policy.denies:
                if action in rule.actions and rule.matches(folded, tenant):
                    deciding_deny = deciding_deny or policy.key
                    if not explain:
                        return Decision(
                            False,
                            DENIED_BY_RULE,
                            policy.key,
                            limits,
                            (),
                            tenant_limits,
                            storage_forbidden_by=forbidding,
                        )
                    matches.append(
                        RuleMatch(policy.key, rule.position, "Deny", rule.matching_pattern(model))
                    )
            if deciding_allow is None or explain:
                for rule in policy.allows:
                    if action in rule.actions and rule.matches(folded, tenant):
                        deciding_allow = deciding_allow or policy.key
                        if explain:
                            matches.append(
                                RuleMatch(
                                    policy.key, rule.position, "Allow", rule.matching_pattern(model)
                                )
                            )
                        else:
                            break
        found = tuple(matches)
        if deciding_deny is not None:
            return Decision(
                False,
                DENIED_BY_RULE,
                deciding_deny,
                limits,
                found,
                tenant_limits,
                storage_forbidden_by=forbidding,
            )
        if deciding_allow is not None:
            return Decision(
                True,
                ALLOWED,
                deciding_allow,
                limits,
                found,
                tenant_limits,
                storage_forbidden_by=forbidding,
            )
        return Decision(
            False,
            NO_MATCHING_ALLOW,
            None,
            limits,
            found,
            tenant_limits,
            storage_forbidden_by=forbidding,
        )
