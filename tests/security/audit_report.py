"""Regenerates the generated parts of ``docs/security/llm-security-audit.md`` and checks
the report against the code (``scripts/security-report [--check]``).

Generated, between ``<!-- generated:NAME start -->`` and ``<!-- generated:NAME end -->``:

* ``pentest-summary`` and ``pentest-cases``: every module in ``tests/security/pentest/``
  that defines ``CASES`` (found by looking, so a new corpus joins without an edit here):
  counts per corpus and category, and one row per case with its expected outcome;
* ``findings``: every module there that defines ``FINDINGS`` (the hand-kept
  ``findings.py`` and what each corpus found), with counts by status and severity;
* ``scanners``: what bandit, detect-secrets and checkov are allowed to leave unreported,
  read from the code (each ``# nosec`` with its rule, the detect-secrets baseline, each
  ``checkov.io/skip`` with its reason). The scans themselves run in ``scripts/test`` and fail
  it on any finding; running them again here would add half a minute to every check.

``--check`` also fails when a test the report or a finding cites (``tests/...py`` or
``tests/...py::test_name``) does not exist, so renaming a test cannot leave the report
pointing at nothing.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import importlib
import json
import pkgutil
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType

from tests.security.pentest.cases import Case, Finding

ROOT = Path(__file__).resolve().parents[2]
REPORT = Path("docs/security/llm-security-audit.md")
PENTEST = "tests.security.pentest"

_SECTION = re.compile(
    r"(<!-- generated:(?P<name>[a-z-]+) start -->\n)(?P<body>.*?)(<!-- generated:(?P=name) end -->)",
    re.DOTALL,
)
# A cited test: a path under tests/ ending in .py, optionally ::function (or ::Class).
_CITED = re.compile(r"(tests/[A-Za-z0-9_/]+\.py)(?:::([A-Za-z_][A-Za-z0-9_]*))?")
_SEVERITIES = ("critical", "high", "medium", "low", "info")
_STATUSES = ("open", "mitigated", "accepted", "fixed")


def corpora(root: Path = ROOT) -> list[ModuleType]:
    """Every module of the pentest package, in name order."""
    package = root / PENTEST.replace(".", "/")
    names = sorted(info.name for info in pkgutil.iter_modules([str(package)]))
    return [importlib.import_module(f"{PENTEST}.{name}") for name in names]


def cases_by_corpus(modules: Iterable[ModuleType]) -> dict[str, tuple[Case, ...]]:
    return {m.__name__.rsplit(".", 1)[1]: m.CASES for m in modules if hasattr(m, "CASES")}


def findings_of(modules: Iterable[ModuleType]) -> list[Finding]:
    found = [f for m in modules if hasattr(m, "FINDINGS") for f in m.FINDINGS]
    return sorted(found, key=lambda f: f.id)


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def render_summary(corpus: dict[str, tuple[Case, ...]]) -> str:
    lines = ["| corpus | category | cases |", "| --- | --- | ---: |"]
    for name, cases in corpus.items():
        for category, count in collections.Counter(c.category for c in cases).items():
            lines.append(f"| `{name}` | {cell(category)} | {count} |")
        lines.append(f"| `{name}` | **all** | **{len(cases)}** |")
    total = sum(len(cases) for cases in corpus.values())
    lines.append(f"| **all corpora** | | **{total}** |")
    return "\n".join(lines) + "\n"


def render_cases(corpus: dict[str, tuple[Case, ...]]) -> str:
    parts = []
    for name, cases in corpus.items():
        parts.append(f"#### `tests/security/pentest/{name}.py`\n")
        parts.append("| id | category | attack | expected outcome |")
        parts.append("| --- | --- | --- | --- |")
        parts.extend(
            f"| {c.id} | {cell(c.category)} | {cell(c.attack)} | {cell(c.expected)} |"
            for c in cases
        )
        parts.append("")
    return "\n".join(parts)


def render_findings(findings: Sequence[Finding]) -> str:
    by_status = collections.Counter(f.status for f in findings)
    by_severity = collections.Counter(f.severity for f in findings)
    lines = [
        f"{len(findings)} findings: "
        + ", ".join(f"{by_status[s]} {s}" for s in _STATUSES if by_status[s])
        + "; by severity "
        + ", ".join(f"{by_severity[s]} {s}" for s in _SEVERITIES if by_severity[s])
        + ".",
        "",
        "| id | severity | description | status | fix commit / test |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines.extend(
        f"| {f.id} | {f.severity} | {cell(f.description)} | {f.status} | {cell(f.evidence)} |"
        for f in findings
    )
    return "\n".join(lines) + "\n"


def render_scanners(root: Path = ROOT) -> str:
    suppressed = []
    for path in sorted((root / "sidegate").rglob("*.py")):
        for line in path.read_text().splitlines():
            match = re.search(r"# nosec (B\d+)", line)
            if match:  # no line number: an edit above it would make the report stale
                suppressed.append(f"  - `{path.relative_to(root)}`: {match.group(1)}")
    baseline = json.loads((root / ".secrets.baseline").read_text())
    allowed = sum(len(results) for results in baseline["results"].values())
    skips = []
    for path in sorted((root / "charts").rglob("*.yaml")):
        for line in path.read_text().splitlines():
            match = re.search(r"checkov\.io/skip\d+: (CKV\w+)=(.*)", line)
            if match:
                check, reason = match.groups()
                skips.append(f"  - `{check}` in `{path.relative_to(root)}`: {reason.strip()}")
    lines = [
        "The scans run in `scripts/test`, which fails on any finding: on a passing run each "
        "reports 0. What each is allowed to leave unreported is read from the code:",
        "",
        "| scanner | what `scripts/test` runs | findings on a passing run | allowed |",
        "| --- | --- | ---: | --- |",
        "| bandit | `bandit -c pyproject.toml -r sidegate --severity-level medium` | 0 medium "
        f"or high | {len(suppressed)} suppressed with `# nosec` |",
        "| detect-secrets | `detect-secrets-hook --baseline .secrets.baseline` over every "
        f"tracked file but `uv.lock` | 0 new | {allowed} audited in the baseline |",
        "| checkov | the rendered chart and the Dockerfile "
        "(`tests/security/test_chart.py::test_checkov_finds_nothing_in_the_rendered_chart`, "
        "`tests/security/test_chart.py::test_checkov_finds_nothing_in_the_dockerfile`) | "
        f"0 failed checks | {len(skips)} skipped in the templates, each with its reason |",
        "",
        "Suppressed bandit findings (each `# nosec` names its rule):",
        "",
        *(suppressed or ["  - none"]),
        "",
        "checkov checks skipped in the chart:",
        "",
        *(skips or ["  - none"]),
    ]
    return "\n".join(lines) + "\n"


def sections(root: Path = ROOT) -> dict[str, str]:
    modules = corpora(root)
    corpus = cases_by_corpus(modules)
    return {
        "pentest-summary": render_summary(corpus),
        "pentest-cases": render_cases(corpus),
        "findings": render_findings(findings_of(modules)),
        "scanners": render_scanners(root),
    }


def regenerate(text: str, generated: dict[str, str]) -> str:
    missing = set(generated) - {m.group("name") for m in _SECTION.finditer(text)}
    if missing:
        raise SystemExit(f"the report has no generated section(s): {', '.join(sorted(missing))}")
    return _SECTION.sub(
        lambda m: m.group(1) + generated.get(m.group("name"), m.group("body")) + m.group(4), text
    )


def missing_tests(texts: Iterable[str], root: Path = ROOT) -> list[str]:
    """Cited test files or test functions that do not exist."""
    problems = []
    for text in texts:
        for match in _CITED.finditer(text):
            path, name = match.groups()
            file = root / path
            if not file.is_file():
                problems.append(f"{path}: no such file")
            elif name and not re.search(
                rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b", file.read_text(), re.MULTILINE
            ):
                problems.append(f"{path}::{name}: no such test")
    return sorted(set(problems))


def check_findings(findings: Sequence[Finding]) -> list[str]:
    problems = []
    counts = collections.Counter(f.id for f in findings)
    problems += [f"{i}: id used {n} times" for i, n in counts.items() if n > 1]
    for f in findings:
        if f.severity not in _SEVERITIES:
            problems.append(f"{f.id}: severity {f.severity!r}")
        if f.status not in _STATUSES:
            problems.append(f"{f.id}: status {f.status!r}")
        if f.status == "fixed" and not _CITED.search(f.evidence):
            problems.append(f"{f.id}: fixed, but cites no test")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/security-report", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if the report is stale or cites a test that does not exist",
    )
    parser.add_argument("--report", type=Path, default=ROOT / REPORT)
    args = parser.parse_args(argv)
    text = args.report.read_text()
    generated = sections()
    wanted = regenerate(text, generated)
    findings = findings_of(corpora())
    problems = missing_tests([text, *(f.evidence for f in findings)])
    problems += check_findings(findings)
    if args.check:
        if wanted != text:
            diff = difflib.unified_diff(
                text.splitlines(), wanted.splitlines(), "report", "generated", lineterm="", n=1
            )
            print("\n".join(list(diff)[:60]), file=sys.stderr)
            problems.append(f"{REPORT}: generated sections are stale; run scripts/security-report")
    elif wanted != text:
        args.report.write_text(wanted)
        print(f"{REPORT}: regenerated")
    for problem in problems:
        print(f"security-report: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
