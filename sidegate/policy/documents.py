"""RBACPolicy YAML (kubectl style, several documents per file) → validated policies.

Errors carry ``file:line`` and the field path, so `sidegate policy check` and the sidecar's
reload log point at the exact spot. Text in, objects out; reading files is the caller's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import yaml
from pydantic import ValidationError

from sidegate.policy import models


@dataclasses.dataclass(frozen=True)
class Problem:
    source: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.source}:{self.line}: {where}{self.message}"


class PolicyDocumentError(Exception):
    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = list(problems)


def _line_of(node: yaml.Node | None, location: Sequence[str | int]) -> int:
    """The line of the deepest node the location reaches (1-based)."""
    found = node
    for part in location:
        if isinstance(found, yaml.MappingNode):
            found = next(
                (value for key, value in found.value if getattr(key, "value", None) == part), None
            )
        elif isinstance(found, yaml.SequenceNode) and isinstance(part, int):
            found = found.value[part] if part < len(found.value) else None
        else:
            break
        if found is None:
            break
        node = found
    return (node.start_mark.line + 1) if node is not None else 1


def _aliased_location(location: Sequence[str | int]) -> list[str | int]:
    # pydantic reports tagged-union members by tag (subjects.0.Tenant.name); the YAML has no
    # such key.
    return [part for part in location if part not in ("ServiceAccount", "Namespace", "Tenant")]


def parse(text: str, source: str) -> list[models.RBACPolicy]:
    """Every document in ``text`` as an RBACPolicy; PolicyDocumentError lists all problems."""
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        documents: list[Any] = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise PolicyDocumentError([Problem(source, line, "", f"not valid YAML: {exc}")]) from None
    policies: list[models.RBACPolicy] = []
    problems: list[Problem] = []
    for node, document in zip(nodes, documents, strict=True):
        if document is None:
            continue  # an empty document, e.g. a trailing ---
        line = _line_of(node, [])
        if not isinstance(document, dict):
            problems.append(Problem(source, line, "", "a document must be a mapping"))
            continue
        if document.get("kind") != models.KIND:
            problems.append(
                Problem(
                    source,
                    line,
                    "kind",
                    f"expected kind {models.KIND}, not {document.get('kind')!r}",
                )
            )
            continue
        try:
            policies.append(models.RBACPolicy.model_validate(document))
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_input=False):
                location = _aliased_location(error["loc"])
                message = "unknown field" if error["type"] == "extra_forbidden" else error["msg"]
                message = message.removeprefix("Value error, ")
                problems.append(
                    Problem(
                        source,
                        _line_of(node, location),
                        ".".join(str(part) for part in location),
                        message,
                    )
                )
    if problems:
        raise PolicyDocumentError(problems)
    return policies
