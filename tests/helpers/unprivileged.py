"""Child processes that run as a container's user, not as the test's root.

Root ignores permission bits, so a file the sidecar could not read on a real node reads fine
in a test that runs as root. The test kubelet (``tests.helpers.kubelet``) creates files as
root with the kubelet's owners and modes; the process that reads them is started here with
the container's uid, gid and supplementary groups (``subprocess``'s ``user``, ``group`` and
``extra_groups``), so the kernel checks the bits as it would in the pod.

That process needs an interpreter and the project's code it can reach. Where the test's
interpreter lives under a directory only root can enter (pyenv under /root, 0700), the
standard library is mirrored, hard links where the filesystem allows, into a directory
anyone may read; everything else on ``sys.path`` that the user cannot reach is mirrored the
same way. Nothing is mirrored where the user can reach it already.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


@dataclasses.dataclass(frozen=True)
class Identity:
    """A process's credentials: what the kubelet gives a container's processes."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


def _allows(info: os.stat_result, who: Identity, bits: int) -> bool:
    """The kernel's owner/group/other check for ``bits`` (a combination of R, W, X)."""
    if info.st_uid == who.uid:
        return info.st_mode & (bits << 6) == bits << 6
    if info.st_gid == who.gid or info.st_gid in who.groups:
        return info.st_mode & (bits << 3) == bits << 3
    return info.st_mode & bits == bits


def reachable(path: Path, who: Identity, bits: int = 4) -> bool:
    """Whether ``who`` can walk down to ``path`` and has ``bits`` (4: read) on it."""
    path = Path(os.path.abspath(path))
    for parent in reversed(path.parents):
        if not _allows(os.stat(parent), who, 1):
            return False
    return _allows(os.stat(path), who, bits)


def readable_directory(prefix: str) -> Path:
    """A new directory under the system's temporary directory that every user may enter
    (pytest's own ``tmp_path`` is under a 0700 directory of the test's user)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _mirror(source: Path, target: Path, skip: Sequence[str] = ()) -> None:
    shutil.copytree(
        source,
        target,
        symlinks=True,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns(*skip) if skip else None,
    )
    for directory, _dirs, _files in os.walk(target):
        Path(directory).chmod(0o755)


@dataclasses.dataclass(frozen=True)
class Python:
    """How to start the project's Python as another user: the interpreter and the
    environment it needs (``PYTHONPATH``, and ``LD_LIBRARY_PATH`` for a mirrored one)."""

    executable: str
    env: dict[str, str]

    def argv(self, *args: str) -> list[str]:
        return [self.executable, *args]


def _stdlib_parts() -> tuple[Path, Path]:
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return Path(sys.base_prefix), Path(sys.base_prefix) / "lib" / version


def python_for(who: Identity, scratch: Path) -> Python:
    """The interpreter ``who`` can run, with this test run's ``sys.path`` (mirrored into
    ``scratch`` where ``who`` cannot reach it)."""
    prefix, stdlib = _stdlib_parts()
    executable = Path(sys.executable).resolve()
    extra: dict[str, str] = {}
    path_entries = [
        p for p in sys.path if p and Path(p).is_dir() and not Path(p).is_relative_to(prefix)
    ]
    if not reachable(executable, who, 5) or not reachable(stdlib, who, 5):
        # The interpreter's own tree, minus what the child never imports.
        base = scratch / "python"
        (base / "bin").mkdir(parents=True)
        _link_or_copy(str(executable), str(base / "bin" / executable.name))
        (base / "lib").mkdir()
        for library in (prefix / "lib").glob("libpython*"):
            _link_or_copy(str(library), str(base / "lib" / library.name))
        _mirror(
            stdlib,
            base / "lib" / stdlib.name,
            skip=("site-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"),
        )
        for directory, _dirs, _files in os.walk(scratch):
            Path(directory).chmod(0o755)
        executable = base / "bin" / executable.name
        extra["LD_LIBRARY_PATH"] = str(base / "lib")  # its RUNPATH points at the original
    entries = []
    for number, entry in enumerate(path_entries):
        if reachable(Path(entry), who, 5):
            entries.append(entry)
            continue
        target = scratch / f"path-{number}"
        _mirror(Path(entry), target, skip=("__pycache__",))
        entries.append(str(target))
    extra["PYTHONPATH"] = os.pathsep.join(entries)
    extra["PYTHONDONTWRITEBYTECODE"] = "1"
    return Python(str(executable), extra)


def needs_root() -> None:
    """Only root can create files owned by another user and drop to that user."""
    if os.geteuid() != 0:
        pytest.skip("needs root: files owned by root read by another uid (CI runs as root)")


@pytest.fixture(scope="session")
def sidecar_python() -> Iterator[Python]:
    """The project's Python as the sidecar image's user (65532) can run it."""
    needs_root()
    scratch = readable_directory("sidegate-python-")
    try:
        yield python_for(Identity(65532, 65532), scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
