"""The pre-commit hook (``.pre-commit-config.yaml``) refuses a commit that stages a secret.

A throwaway git repository gets the project's hook configuration and detect-secrets
baseline, ``pre-commit install`` puts the hook in place, and real ``git commit`` calls run
it: a staged fake key (made here, at run time) is refused and nothing is committed; the same
commit without the key goes through, so the refusal is about the key.
"""

from __future__ import annotations

import os
import secrets
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def git(repo: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        # The project's tools (pre-commit, detect-secrets-hook) first; pre-commit's own
        # cache in the temporary directory, not in the user's home.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    shutil.copy(ROOT / ".pre-commit-config.yaml", repo)
    shutil.copy(ROOT / ".secrets.baseline", repo)
    assert git(repo, "init", "-q", env=env).returncode == 0
    for key, value in (("user.email", "audit@example.invalid"), ("user.name", "audit")):
        git(repo, "config", key, value, env=env)
    git(repo, "add", ".", env=env)
    assert git(repo, "commit", "-qm", "project files", env=env).returncode == 0
    installed = subprocess.run(
        [Path(sys.executable).parent / "pre-commit", "install"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr
    return repo, env


def commits(repo: Path, env: dict[str, str]) -> int:
    return len(git(repo, "log", "--oneline", env=env).stdout.splitlines())


def aws_key_id() -> str:
    return "AKIA" + "".join(secrets.choice(string.ascii_uppercase + "234567") for _ in range(16))


@pytest.mark.parametrize(
    ("shape", "line"),
    [
        ("AWS Access Key", lambda: f'aws_access_key_id = "{aws_key_id()}"\n'),
        ("Secret Keyword", lambda: f'api_key = "{secrets.token_hex(20)}"\n'),
    ],
    ids=["aws-key", "keyword"],
)
def test_the_hook_refuses_a_staged_key(
    repo: tuple[Path, dict[str, str]], shape: str, line: object
) -> None:
    path, env = repo
    assert callable(line)
    (path / "settings.py").write_text("TIMEOUT = 30\n" + line())
    git(path, "add", "settings.py", env=env)
    refused = git(path, "commit", "-m", "add settings", env=env)
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert "detect-secrets" in output and shape in output and "settings.py" in output
    assert commits(path, env) == 1, "the commit with the key went in"


def test_a_commit_without_a_secret_goes_through(repo: tuple[Path, dict[str, str]]) -> None:
    path, env = repo
    (path / "settings.py").write_text("TIMEOUT = 30\n")
    git(path, "add", "settings.py", env=env)
    committed = git(path, "commit", "-m", "add settings", env=env)
    assert committed.returncode == 0, committed.stdout + committed.stderr
    assert "detect-secrets (staged changes)" in committed.stdout + committed.stderr
    assert commits(path, env) == 2
