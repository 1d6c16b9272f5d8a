"""The RBACPolicy CustomResourceDefinition, generated from the pydantic models.

``crds/rbacpolicy.yaml`` is this module's output (`sidegate policy crd`); a test fails when
the file is stale, and another checks that the CRD's schema and the models accept and
reject the same corpus. Kubernetes wants a *structural* schema, so pydantic's JSON Schema
is rewritten: references inlined, ``Optional`` as ``nullable``, ``const`` as a one-value
enum, the subject union as one object whose ``oneOf`` branches only narrow values.
Unknown fields are not listed as ``additionalProperties: false`` (Kubernetes forbids it
next to ``properties``): the API server prunes them, and kubectl's strict field validation
rejects them. Lists with a key say so (``x-kubernetes-list-type: map`` and its keys, from
the models' ``json_schema_extra``), so the API server refuses a key twice and server-side
apply merges entries by key; the models refuse the same.
"""

from __future__ import annotations

from typing import Any

from sidegate.policy import models

GROUP = "sidegate.io"
VERSION = "v1alpha1"
PLURAL = "rbacpolicies"


def _inline(schema: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, definitions) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _inline(definitions[schema["$ref"].rsplit("/", 1)[-1]], definitions)
    return {key: _inline(value, definitions) for key, value in schema.items()}


def _structural(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_structural(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {k: v for k, v in schema.items() if k not in ("title", "additionalProperties")}
    if schema.get("default", 0) is None:
        del schema["default"]
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    options = schema.get("anyOf")
    if options and {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        del schema["anyOf"]
        if len(rest) == 1:
            return _structural({**rest[0], **schema, "nullable": True})
        else:
            schema["anyOf"] = rest
            schema["nullable"] = True
    if "oneOf" in schema and "discriminator" in schema:
        schema = _tagged_union(schema)
    return {key: _structural(value) for key, value in schema.items()}


def _tagged_union(schema: dict[str, Any]) -> dict[str, Any]:
    """One object with every branch's properties typed; oneOf branches narrow values only."""
    branches = schema["oneOf"]
    tag = schema["discriminator"]["propertyName"]
    properties: dict[str, Any] = {}
    narrowing = []
    for branch in branches:
        narrowed: dict[str, Any] = {}
        for name, field in branch["properties"].items():
            typed = properties.setdefault(name, {"type": field["type"]})
            if "description" in field and "description" not in typed:
                typed["description"] = field["description"]
            limits = {
                k: v
                for k, v in field.items()
                if k in ("pattern", "maxLength", "minLength", "const", "enum")
            }
            narrowed[name] = limits
        narrowing.append({"properties": narrowed, "required": branch.get("required", [])})
    properties[tag]["enum"] = [b["properties"][tag]["const"] for b in branches]
    properties["name"]["description"] = "The service account or namespace."
    properties["name"]["maxLength"] = max(
        b["properties"]["name"].get("maxLength", 0) for b in branches
    )
    return {
        "type": "object",
        "required": [tag, "name"],
        "properties": properties,
        "oneOf": narrowing,
    }


def _schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True)
    definitions = raw.pop("$defs", {})
    result: dict[str, Any] = _structural(_inline(raw, definitions))
    return result


# `kubectl explain` text of the fields every Kubernetes object has (as the API's own types
# word them).
_API_VERSION = (
    "APIVersion defines the versioned schema of this representation of an object: "
    f"{models.API_VERSION}."
)
_KIND = f"Kind is the REST resource this object represents: {models.KIND}."
_METADATA = "Standard object's metadata: name, namespace, labels, annotations."


def crd() -> dict[str, Any]:
    spec = _schema(models.RBACPolicySpec)
    spec["description"] = "Who may call which models, and how often (docs/policies.md)."
    status = _schema(models.RBACPolicyStatus)
    status["description"] = "What the operator made of the spec; written by the operator only."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": PLURAL,
                "singular": "rbacpolicy",
                "shortNames": ["rbp"],
                # `kubectl get sidegate` lists them; not `all`, which is for workloads (and
                # `kubectl delete all` would take the policies with it).
                "categories": ["sidegate"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {
                            "name": "Reason",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].reason',
                        },
                        {"name": "Rules", "type": "integer", "jsonPath": ".status.ruleCount"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                        {
                            "name": "Message",
                            "type": "string",
                            "priority": 1,  # kubectl get -o wide
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "RBACPolicy grants service accounts and namespaces "
                            "access to LLM models, with rate limits.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": _API_VERSION},
                                "kind": {"type": "string", "description": _KIND},
                                "metadata": {"type": "object", "description": _METADATA},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }
