"""The Python half of `scripts/mutation`: which modules and tests, and the results table.

    python benchmarks/mutation.py modules [--all]        the default (or every) module
    python benchmarks/mutation.py mutmut-config MODULE   the [tool.mutmut] table for MODULE
    python benchmarks/mutation.py report STAGES MODULE…  the table, from mutmut's results

mutmut 3 reads its settings from the project's pyproject.toml only, and runs every mutant
against the tests that were selected when it collected its stats. To run each module
against its own tests, `scripts/mutation` copies the project into `mutants/<module>/`,
appends this module's table to the copy's pyproject.toml and runs mutmut there; `report`
then reads the `.meta` file mutmut leaves beside each mutated module.

Only mutmut's diff helpers are imported (`mutmut.mutation.diff_apply`, which reads no
configuration): mutmut's main module loads its configuration at import time and fails outside
a directory configured for it, and running `mutmut show` once per mutant took seconds each on
a loaded machine. The exit codes below are mutmut 3's own (`mutmut.stats.status_by_exit_code`).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = Path(__file__).resolve().with_suffix(".toml")

KILLED = frozenset({1, 3})  # a test failed; 3 is pytest's internal error, also a kill
TIMEOUT = frozenset({24, -24, 36, 152, 255})  # SIGXCPU / mutmut's own timeout: the mutant hangs
SURVIVED = 0
NO_TESTS = frozenset({5, 33})  # no selected test reaches the mutated function


def load_settings() -> dict[str, object]:
    with SETTINGS.open("rb") as file:
        return tomllib.load(file)


def modules(settings: dict[str, object]) -> dict[str, dict[str, object]]:
    found = settings["modules"]
    assert isinstance(found, dict)
    return found


def mutmut_config(module: str, tests: list[str]) -> str:
    """The [tool.mutmut] table for one module. TOML strings written as JSON strings: the
    paths hold no characters where the two differ."""
    lines = [
        "",
        "[tool.mutmut]",
        'source_paths = ["sidegate"]',
        # mutmut copies only the sources and tests/; some tests read the CRDs, the chart…
        f"also_copy = {json.dumps(beside_the_code())}",
        f"only_mutate = [{json.dumps(module)}]",
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        # The copy's own cache and hypothesis database; nothing is written back to the tree.
        # Unit tests before the ones that start servers: a mutant dies at its first failure.
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-p", "tests.helpers.mutation_run"]',
        "",
    ]
    return "\n".join(lines)


def beside_the_code() -> list[str]:
    """The project's other top-level files and directories, for tests that read them."""
    return sorted(
        p.name
        for p in ROOT.iterdir()
        if not p.name.startswith(".") and p.name not in ("sidegate", "tests", "mutants")
    )


@dataclass
class Equivalent:
    mutant: str
    change: str
    reason: str


@dataclass
class ModuleResult:
    module: str
    mutants: int = 0
    killed: int = 0
    timeouts: int = 0
    equivalent: list[tuple[str, str]] = field(default_factory=list)  # (mutant, reason)
    survived: list[tuple[str, str]] = field(default_factory=list)  # (mutant, change or note)
    no_tests: list[tuple[str, str]] = field(default_factory=list)
    other: list[tuple[str, int | None]] = field(default_factory=list)  # not run, suspicious…
    stale: list[str] = field(default_factory=list)  # equivalence entries that no longer fit
    killed_but_listed: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        done = self.killed + self.timeouts + len(self.equivalent)
        return 100.0 * done / self.mutants if self.mutants else 100.0


def equivalents(settings: dict[str, object]) -> dict[str, Equivalent]:
    entries = settings.get("equivalent", [])
    assert isinstance(entries, list)
    return {e["mutant"]: Equivalent(e["mutant"], e["change"], e["reason"]) for e in entries}


def change_of(stage: Path, module: str, mutant: str) -> str:
    """The `+` lines of `mutmut show`: the code the mutant runs instead of the original."""
    import libcst
    from mutmut.mutation.diff_apply import read_mutant_function, read_original_function

    tree = _mutated_module(stage / "mutants" / module)
    original, mutated = (
        libcst.Module([function]).code.strip()
        for function in (read_original_function(tree, mutant), read_mutant_function(tree, mutant))
    )
    diff = difflib.unified_diff(original.split("\n"), mutated.split("\n"), lineterm="")
    added = [
        line[1:].strip() for line in diff if line.startswith("+") and not line.startswith("+++")
    ]
    return " / ".join(added)


@functools.cache
def _mutated_module(path: Path) -> Any:
    """mutmut's mutated copy of a module (every mutant as a function), parsed once."""
    import libcst

    return libcst.parse_module(path.read_text())


def stage_of(stages: Path, module: str) -> Path:
    return stages / module.removesuffix(".py").replace("/", ".")


def result_for(stages: Path, module: str, known: dict[str, Equivalent]) -> ModuleResult:
    stage = stage_of(stages, module)
    meta = json.loads((stage / "mutants" / (module + ".meta")).read_text())
    result = ModuleResult(module)
    for mutant, code in sorted(meta["exit_code_by_key"].items()):
        result.mutants += 1
        entry = known.get(mutant)
        if code in KILLED or code in TIMEOUT:
            result.killed += code in KILLED
            result.timeouts += code in TIMEOUT
            if entry is not None:
                result.killed_but_listed.append(mutant)
            continue
        if code != SURVIVED and code not in NO_TESTS:
            result.other.append((mutant, code))
            continue
        change = change_of(stage, module, mutant)
        if entry is not None and entry.change == change:
            result.equivalent.append((mutant, entry.reason))
            continue
        if entry is not None:
            result.stale.append(mutant)
        target = result.survived if code == SURVIVED else result.no_tests
        target.append((mutant, change))
    return result


def table(results: list[ModuleResult]) -> str:
    rows = [
        "| module | mutants | killed | equivalent | survived | no tests | killed + equivalent |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        killed = f"{r.killed}" + (f" (+{r.timeouts} timeout)" if r.timeouts else "")
        rows.append(
            f"| `{r.module}` | {r.mutants} | {killed} | {len(r.equivalent)} | "
            f"{len(r.survived)} | {len(r.no_tests)} | {r.score:.1f} % |"
        )
    return "\n".join(rows)


def details(results: list[ModuleResult]) -> str:
    out: list[str] = []
    for r in results:
        notes: list[str] = []
        notes += [f"  SURVIVED  {m}: {c}" for m, c in r.survived]
        notes += [f"  NO TESTS  {m}: {c}" for m, c in r.no_tests]
        notes += [f"  NOT RUN   {m}: exit code {c}" for m, c in r.other]
        notes += [f"  STALE     {m}: its equivalence entry no longer matches" for m in r.stale]
        notes += [f"  KILLED    {m}: listed as equivalent, now killed" for m in r.killed_but_listed]
        notes += [f"  equivalent {m}: {reason}" for m, reason in r.equivalent]
        if notes:
            out += [r.module, *notes]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/mutation.py")
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("modules")
    listing.add_argument("--all", action="store_true")
    config = commands.add_parser("mutmut-config")
    config.add_argument("module")
    stage = commands.add_parser("stage")
    stage.add_argument("stages", type=Path)
    stage.add_argument("module")
    report = commands.add_parser("report")
    report.add_argument("stages", type=Path)
    report.add_argument("modules", nargs="+")
    args = parser.parse_args(argv)

    settings = load_settings()
    known = modules(settings)
    if args.command == "modules":
        print("\n".join(m for m, spec in known.items() if args.all or spec.get("default")))
        return 0
    if args.command in ("mutmut-config", "stage"):
        if args.module not in known:
            parser.error(f"{args.module} is not in {SETTINGS.name}: add it with its tests")
        if args.command == "stage":
            print(stage_of(args.stages, args.module))
            return 0
        tests = known[args.module]["tests"]
        assert isinstance(tests, list)
        print(mutmut_config(args.module, tests))
        return 0
    results = [result_for(args.stages, m, equivalents(settings)) for m in args.modules]
    print(table(results))
    print()
    print(details(results))
    return 1 if any(r.survived or r.no_tests or r.stale or r.other for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
