"""Writes a directory exactly as the kubelet writes a projected Secret volume.

The kubelet's AtomicWriter: a new ``..<timestamp>`` directory with the files, a
``..data_tmp`` symlink to it renamed over ``..data``, user-visible names as symlinks through
``..data``, then the old timestamped directory removed.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from pathlib import Path

_counter = itertools.count()


class ProjectedVolume:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def publish(self, files: dict[str, str | bytes]) -> None:
        stamp = time.strftime("%Y_%m_%d_%H_%M_%S") + f".{next(_counter):09d}"
        target = self.root / f"..{stamp}"
        target.mkdir()
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            (target / name).write_bytes(data)
        data_link = self.root / "..data"
        old = os.readlink(data_link) if data_link.is_symlink() else None
        temporary = self.root / "..data_tmp"
        os.symlink(target.name, temporary)
        os.replace(temporary, data_link)
        for name in files:
            visible = self.root / name
            if not visible.is_symlink():
                os.symlink(f"..data/{name}", visible)
        for entry in self.root.iterdir():
            if not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if old:
            shutil.rmtree(self.root / old)
