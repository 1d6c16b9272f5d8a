"""Which admission requests the API server sends to a rendered webhook: its namespaceSelector
and objectSelector (label selectors, as kube-apiserver matches them) and its matchConditions
(CEL, evaluated with cel-python on the same `request` and `object` variables)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpression holds. An empty or
    absent selector selects everything."""
    selector = selector or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = set(expression.get("values") or [])
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def conditions_hold(hook: Mapping[str, Any], request: Mapping[str, Any]) -> bool:
    """Every matchCondition is true for this request (an error raises: with failurePolicy
    Fail the API server would refuse the request, which a test must not take for "skipped")."""
    environment = celpy.Environment()
    variables = {
        "request": celpy.json_to_cel(dict(request)),
        "object": celpy.json_to_cel(request.get("object")),
        "oldObject": celpy.json_to_cel(request.get("oldObject")),
    }
    for condition in hook.get("matchConditions") or []:
        program = environment.program(environment.compile(condition["expression"]))
        result = program.evaluate(variables)
        if isinstance(result, celpy.CELEvalError):
            raise AssertionError(f"{condition['name']}: {result}")
        if not bool(result):
            return False
    return True


def sent(
    hook: Mapping[str, Any],
    namespace: str,
    namespace_labels: Mapping[str, str],
    request: Mapping[str, Any],
) -> bool:
    """Whether the API server calls this webhook for the request (its rules already match)."""
    labels = {"kubernetes.io/metadata.name": namespace, **namespace_labels}
    if not selects(hook.get("namespaceSelector"), labels):
        return False
    obj = request.get("object") or {}
    if not selects(hook.get("objectSelector"), (obj.get("metadata") or {}).get("labels") or {}):
        return False
    return conditions_hold(hook, request)


def request(
    obj: Mapping[str, Any], subresource: str = "", groups: tuple[str, ...] = ()
) -> dict[str, Any]:
    """An AdmissionRequest's fields the conditions read; subResource is "" when there is none."""
    return {
        "operation": "CONNECT" if subresource == "exec" else "CREATE",
        "subResource": subresource,
        "userInfo": {"username": "someone", "groups": [*groups, "system:authenticated"]},
        "object": dict(obj),
        "oldObject": None,
    }
