"""The answer to "would this caller be allowed this model, and why". Used by the admin
API (as JSON) and by `sidegate policy explain` (as JSON or text)."""

from __future__ import annotations

from typing import Any

from sidegate.policy import rules

_LIMIT_NAMES = {
    "requests_per_minute": "requestsPerMinute",
    "tokens_per_minute": "tokensPerMinute",
    "max_concurrent": "maxConcurrent",
}


def explain(
    index: rules.PolicyIndex, caller: rules.Caller, model: str, action: str
) -> dict[str, Any]:
    decision = index.decide(caller, model, action, explain=True)
    return {
        "caller": {
            "namespace": caller.namespace,
            "serviceAccount": caller.service_account,
            "tenant": caller.tenant,
        },
        "model": model,
        "action": action,
        "decision": "allowed" if decision.allowed else "denied",
        "reason": decision.reason,
        "decidingPolicy": decision.policy,
        "applicablePolicies": [p.key for p in index.applicable(caller)],
        "matchingRules": [
            {"policy": m.policy, "rule": m.rule, "effect": m.effect, "pattern": m.pattern}
            for m in decision.matches
        ],
        "limits": _limits(decision.limits),
        "tenantLimits": _limits(decision.tenant_limits),
        "retention": {
            "providerStorage": "Forbidden" if decision.storage_forbidden_by else "Allowed",
            "policy": decision.storage_forbidden_by,
        },
        "bundleHash": index.hash,
    }


def _limits(limits: rules.EffectiveLimits) -> dict[str, Any]:
    sources = dict(limits.sources)
    return {
        name: {"value": getattr(limits, dimension), "policy": sources[dimension]}
        for dimension, name in _LIMIT_NAMES.items()
        if dimension in sources
    }


_REASONS = {
    rules.ALLOWED: "an Allow rule matches and no Deny rule does",
    rules.DENIED_BY_RULE: "a Deny rule matches (a Deny wins over every Allow)",
    rules.NO_MATCHING_ALLOW: "no Allow rule of the caller's policies matches (deny by default)",
    rules.NO_POLICY: "no policy applies to this caller (deny by default)",
    rules.TENANT_NOT_ALLOWED: "a policy of the caller lists allowedTenants without this tenant",
}


def as_text(answer: dict[str, Any]) -> str:
    caller = answer["caller"]
    who = f"{caller['namespace']}/{caller['serviceAccount']}"
    if caller["tenant"]:
        who += f" (tenant {caller['tenant']})"
    lines = [
        f"{answer['decision'].upper()}: {answer['model']} for {who}, action {answer['action']}",
        f"  reason: {answer['reason']}: {_REASONS[answer['reason']]}",
    ]
    if answer["decidingPolicy"]:
        lines.append(f"  deciding policy: {answer['decidingPolicy']}")
    lines.append(f"  applicable policies: {', '.join(answer['applicablePolicies']) or 'none'}")
    if answer["matchingRules"]:
        lines.append("  matching rules:")
        lines += [
            f"    {m['policy']} rules[{m['rule']}]: {m['effect']} {m['pattern']}"
            for m in answer["matchingRules"]
        ]
    if answer["limits"]:
        lines.append("  limits in force (the service account's, over all its tenants):")
        lines += [
            f"    {name}: {v['value']} (from {v['policy']})" for name, v in answer["limits"].items()
        ]
    else:
        lines.append("  limits in force: none")
    if answer["tenantLimits"]:
        lines.append(f"  tenant {caller['tenant']} sub-budget (inside the limits above):")
        lines += [
            f"    {name}: {v['value']} (from {v['policy']})"
            for name, v in answer["tenantLimits"].items()
        ]
    retention = answer["retention"]
    if retention["policy"]:
        lines.append(
            f"  provider storage: Forbidden (from {retention['policy']}): Responses requests "
            "go with store: false; store: true and background: true are refused"
        )
    else:
        lines.append("  provider storage: Allowed")
    return "\n".join(lines)
