"""What the API server checks of a custom resource beyond its OpenAPI schema: the CEL rules
(`x-kubernetes-validations`, evaluated with cel-python with `self` bound to the value at
their node, as kube-apiserver binds it) and the keys of list types (`x-kubernetes-list-type`
map: no two items with the same keys; set: no item twice). jsonschema checks the rest."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import celpy


def violations(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Every such rule the value breaks, with where; a rule that cannot be evaluated fails
    the test (the API server would refuse the object, or the CRD)."""
    found: list[str] = []
    if value is None:
        return found
    for rule in schema.get("x-kubernetes-validations") or ():
        if not evaluate(rule["rule"], value):
            found.append(f"{path or '<root>'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, list):
        found.extend(_duplicates(schema, value, path))
        for index, item in enumerate(value):
            found.extend(violations(schema.get("items") or {}, item, f"{path}[{index}]"))
    elif isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, item in value.items():
            if name in properties:
                found.extend(violations(properties[name], item, f"{path}.{name}"))
    return found


def _duplicates(schema: Mapping[str, Any], value: list[Any], path: str) -> list[str]:
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set":
        keys = [repr(item) for item in value]
    elif kind == "map":
        names = schema["x-kubernetes-list-map-keys"]
        keys = [
            repr(tuple(item.get(n) for n in names)) if isinstance(item, dict) else repr(item)
            for item in value
        ]
    else:
        return []
    return [f"{path}[{i}]: Duplicate value" for i, key in enumerate(keys) if key in keys[:i]]


def evaluate(expression: str, value: Any) -> bool:
    environment = celpy.Environment()
    program = environment.program(environment.compile(expression))
    result = program.evaluate({"self": celpy.json_to_cel(value)})
    if isinstance(result, celpy.CELEvalError):
        raise AssertionError(f"{expression!r} cannot be evaluated on {value!r}: {result}")
    return bool(result)


def rules(schema: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every CEL rule of a schema, with the path of its node."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, dict):
        found.extend((path, rule) for rule in schema.get("x-kubernetes-validations") or ())
        for name, child in (schema.get("properties") or {}).items():
            found.extend(rules(child, f"{path}.{name}"))
        if "items" in schema:
            found.extend(rules(schema["items"], f"{path}[]"))
    return found
