"""Reading RBACPolicy YAML files (kubectl style) from disk: one loader for the sidecar's
policy directory and for `sidegate policy check|explain|bundle`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

from sidegate.policy import documents, models

SUFFIXES = (".yaml", ".yml")
# A policy file is a few KiB; ten thousand policies fit in ~5 MB. Past this a file is
# refused unread: parsing 50 MB of YAML takes half a minute and hundreds of MB.
MAX_FILE_BYTES = 4 * 1024 * 1024


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


def read(paths: Iterable[Path], *, max_file_bytes: int = MAX_FILE_BYTES) -> Read:
    result = Read()
    for path in policy_files(paths):
        try:
            with path.open("rb") as file:
                data = file.read(max_file_bytes + 1)
            if len(data) > max_file_bytes:
                result.problems.append(f"{path}: larger than {max_file_bytes} bytes")
                continue
            text = data.decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            result.problems.append(f"{path}: unreadable ({exc})")
            continue
        if not text.strip():
            # An emptied file is most often a write caught half-way or a mistake; either
            # way it is not a policy change anyone meant to make silently.
            result.warnings.append(f"{path}: empty, so it defines no policy")
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
