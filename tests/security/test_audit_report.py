"""The audit report's generator (``scripts/security-report``): the report in the tree is
current, and ``--check`` fails on a stale generated section or a cited test that is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.security import audit_report
from tests.security.pentest import clients, findings, found_by_clients

REPORT = audit_report.ROOT / audit_report.REPORT


def test_the_report_in_the_tree_is_current() -> None:
    assert audit_report.main(["--check"]) == 0


def test_every_corpus_and_every_findings_module_is_found() -> None:
    modules = audit_report.corpora()
    assert audit_report.cases_by_corpus(modules)["clients"] == clients.CASES
    found = {f.id for f in audit_report.findings_of(modules)}
    assert {f.id for f in findings.FINDINGS + found_by_clients.FINDINGS} <= found


def test_a_stale_generated_section_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "report.md"
    stale.write_text(REPORT.read_text().replace("| SG-C-RS-001 |", "| SG-C-RS-999 |", 1))
    assert audit_report.main(["--check", "--report", str(stale)]) == 1
    assert "generated sections are stale" in capsys.readouterr().err
    assert audit_report.main(["--report", str(stale)]) == 0  # regenerating repairs it
    assert stale.read_text() == REPORT.read_text()


def test_a_cited_test_that_does_not_exist_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    renamed = tmp_path / "report.md"
    cited = "tests/security/test_hostile_clients.py::test_the_provider_saw_only_what_the_corpus_meant_to_reach_it"
    assert cited in REPORT.read_text()
    renamed.write_text(REPORT.read_text().replace(cited, cited + "_renamed"))
    assert audit_report.main(["--check", "--report", str(renamed)]) == 1
    assert "_renamed: no such test" in capsys.readouterr().err
    assert audit_report.missing_tests(["tests/security/gone.py"]) == [
        "tests/security/gone.py: no such file"
    ]
