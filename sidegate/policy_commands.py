"""`sidegate policy check|explain|bundle`: offline answers about policy files."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sidegate import errors
from sidegate.policy import bundle, documents, explaining, models, rules

SUFFIXES = (".yaml", ".yml")


def _files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found += sorted(
                p for p in path.iterdir() if p.suffix in SUFFIXES and not p.name.startswith(".")
            )
        else:
            found.append(path)
    return found


def load(paths: list[str]) -> tuple[list[models.RBACPolicy], list[str], list[str]]:
    """Policies, errors and warnings from files and directories."""
    policies: list[models.RBACPolicy] = []
    problems: list[str] = []
    warnings: list[str] = []
    seen: dict[tuple[str, str], str] = {}
    for path in _files(paths):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: cannot read: {exc}")
            continue
        try:
            parsed = documents.parse(text, str(path))
        except documents.PolicyDocumentError as exc:
            problems += [str(p) for p in exc.problems]
            continue
        for policy in parsed:
            where = f"{path}: {'/'.join(policy.key)}"
            if policy.key in seen:
                problems.append(f"{where}: also defined in {seen[policy.key]}")
            seen[policy.key] = str(path)
            if not policy.spec.subjects:
                warnings.append(f"{where}: no subjects, so it applies to no one")
            if not policy.spec.rules and policy.spec.rate_limits is None:
                warnings.append(f"{where}: no rules and no rate limits, so it does nothing")
            policies.append(policy)
    return policies, problems, warnings


def check(args: argparse.Namespace) -> int:
    policies, problems, warnings = load(args.paths)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if problems or (args.strict and warnings):
        print(f"{len(problems)} error(s), {len(warnings)} warning(s)", file=sys.stderr)
        return 1
    compiled = bundle.to_bundle(policies)
    print(f"ok: {len(policies)} policies, bundle {compiled.hash}")
    return 0


def explain(args: argparse.Namespace) -> int:
    policies, problems, _ = load(args.policies)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    if args.tenant is not None and not models.is_valid_tenant(args.tenant):
        print(f"error: tenant {args.tenant!r} is not a valid tenant name", file=sys.stderr)
        return 2
    try:
        index = rules.PolicyIndex(bundle.to_bundle(policies))
    except errors.BundleRejected as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    caller = rules.Caller(args.namespace, args.service_account, args.tenant)
    answer = explaining.explain(index, caller, args.model, args.action)
    print(json.dumps(answer, indent=2) if args.json else explaining.as_text(answer))
    return 0 if answer["decision"] == "allowed" else 3


def build_bundle(args: argparse.Namespace) -> int:
    policies, problems, _ = load(args.paths)
    if problems:
        for line in problems:
            print(f"error: {line}", file=sys.stderr)
        return 1
    data = bundle.dumps(bundle.to_bundle(policies))
    if args.output == "-":
        sys.stdout.write(data.decode() + "\n")
    else:
        Path(args.output).write_bytes(data)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    policy = commands.add_parser(
        "policy",
        help="check and explain RBACPolicy files, offline",
        description="Offline tools for RBACPolicy YAML (the same files kubectl applies).",
    )
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="COMMAND")

    checker = sub.add_parser(
        "check",
        help="validate policy files",
        description="Validate RBACPolicy files and directories. Errors are file:line: field: "
        "message. Exit 0 when valid, 1 when not.",
    )
    checker.add_argument("paths", nargs="+", metavar="PATH", help="YAML files or directories")
    checker.add_argument("--strict", action="store_true", help="warnings fail too")
    checker.set_defaults(func=check)

    explainer = sub.add_parser(
        "explain",
        help="would this caller be allowed this model, and why",
        description="Evaluate policies from files for one caller and model, and say why. "
        "Exit 0 when allowed, 3 when denied, 2 when the policies are invalid.",
    )
    explainer.add_argument("--policies", "-p", nargs="+", required=True, metavar="PATH")
    explainer.add_argument("--namespace", "-n", required=True)
    explainer.add_argument("--service-account", "-s", required=True)
    explainer.add_argument("--tenant", "-t")
    explainer.add_argument("--model", "-m", required=True)
    explainer.add_argument("--action", "-a", default="chat", choices=models.ACTIONS)
    explainer.add_argument("--json", action="store_true", help="the admin API's JSON answer")
    explainer.set_defaults(func=explain)

    bundler = sub.add_parser(
        "bundle",
        help="compile policy files into a bundle file",
        description="Compile policies into the bundle JSON the sidecar reads from "
        "policy.bundle_file (what the operator writes in a cluster).",
    )
    bundler.add_argument("paths", nargs="+", metavar="PATH")
    bundler.add_argument("--output", "-o", default="-", help="file to write, - for stdout")
    bundler.set_defaults(func=build_bundle)
