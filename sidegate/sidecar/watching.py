"""Telling a reloader that files in a directory changed, through inotify.

Two ways files change under us, both handled by watching the directory (a watch on a file
would see only DELETE_SELF when the kubelet swaps it, and then die):

* the kubelet's projected volume: it writes a new ``..<timestamp>`` directory, points
  ``..data_tmp`` at it and renames that over ``..data`` (MOVED_TO ``..data``);
* plain files, written in place (CLOSE_WRITE) or replaced by rename (MOVED_TO), or removed.

Only completed writes count: a file's CREATE comes before its content (an editor or
`cp` creating it), so reading then would see it empty or cut half-way. CREATE counts only
for a symlink, which is whole when it appears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import inotify_simple

logger = logging.getLogger(__name__)

_MASK = (
    inotify_simple.flags.CLOSE_WRITE
    | inotify_simple.flags.MOVED_TO
    | inotify_simple.flags.CREATE
    | inotify_simple.flags.DELETE
    | inotify_simple.flags.MOVED_FROM
)
_KUBELET_DATA = "..data"


def is_relevant(name: str) -> bool:
    """True for ``..data`` and for visible file names; editors' and kubelet temporaries skip."""
    return name == _KUBELET_DATA or (bool(name) and not name.startswith("."))


def _completes(directory: Path, event: inotify_simple.Event) -> bool:
    """Whether ``event`` leaves a relevant name complete (or gone)."""
    if not is_relevant(str(event.name)):
        return False
    if event.mask & inotify_simple.flags.CREATE:
        return (directory / str(event.name)).is_symlink()
    return True


async def watch(
    directory: Path, on_change: Callable[[], Awaitable[None]], *, settle: float = 0.005
) -> None:
    """Call ``on_change`` after every batch of relevant changes in ``directory``. Runs until
    cancelled. ``settle`` lets a burst of events (a kubelet swap is five) become one reload."""
    inotify = inotify_simple.INotify(nonblocking=True)
    try:
        inotify.add_watch(str(directory), _MASK)
        changed = asyncio.Event()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                events = inotify.read(timeout=0)
            except BlockingIOError:
                return
            if any(_completes(directory, event) for event in events):
                changed.set()

        loop.add_reader(inotify.fileno(), readable)
        try:
            while True:
                await changed.wait()
                await asyncio.sleep(settle)
                changed.clear()
                try:
                    await on_change()
                except Exception:
                    # A reloader bug must not kill the watch; the next change retries.
                    logger.exception("reload after a change in %s failed", directory)
        finally:
            loop.remove_reader(inotify.fileno())
    finally:
        inotify.close()
