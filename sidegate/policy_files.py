"""Reading RBACPolicy YAML files (kubectl style) from disk: one loader for the sidecar's
policy directory and for `sidegate policy check|explain|bundle`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from sidegate.policy import documents, models

SUFFIXES = (".yaml", ".yml")


@dataclasses.dataclass
class Read:
    policies: list[models.RBACPolicy] = dataclasses.field(default_factory=list)
    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # namespace/name → file
    problems: list[str] = dataclasses.field(default_factory=list)  # any one rejects the read
    warnings: list[str] = dataclasses.field(default_factory=list)  # valid, but likely a mistake


def policy_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given; directories as their visible *.yaml / *.yml files, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.iterdir()
                if p.suffix in SUFFIXES and not p.name.startswith(".") and p.is_file()
            )
        else:
            found.append(path)
    return found


def read(paths: Iterable[Path]) -> Read:
    result = Read()
    for path in policy_files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.problems.append(f"{path}: unreadable ({exc})")
            continue
        try:
            parsed = documents.parse(text, str(path))
        except documents.PolicyDocumentError as exc:
            result.problems += [str(p) for p in exc.problems]
            continue
        for policy in parsed:
            key = "/".join(policy.key)
            if key in result.files:
                result.problems.append(
                    f"{path}: policy {key} is also defined in {result.files[key]}"
                )
            result.files[key] = path
            if not policy.spec.subjects:
                result.warnings.append(f"{path}: {key}: no subjects, so it applies to no one")
            if not policy.spec.rules and policy.spec.rate_limits is None:
                result.warnings.append(
                    f"{path}: {key}: no rules and no rate limits, so it does nothing"
                )
            result.policies.append(policy)
    return result
