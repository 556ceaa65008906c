"""Noticing that this process's parent died: a daemon thread polls os.getppid() every POLL_S seconds.

torchrun starts its workers in their own sessions, and multiprocessing's spawned workers outlive a parent killed with
SIGKILL, so nothing stops such children when their parent dies (the OOM killer, a scheduler that kills the launcher
first): they keep writing into the run's folder as orphans. The kernel reparents an orphan (to init or the nearest
subreaper), so its parent pid changes however the parent died; polling it once a second costs nothing.

Chosen over Linux's prctl(PR_SET_PDEATHSIG): that signal is sent when the parent *thread* that forked the child ends,
not the parent process, so its meaning depends on how the parent (a launcher we do not control) starts its children;
set by the child itself after start it races with a parent that dies first; it is Linux-only; and it arrives as a
bare signal, where each user here wants its own bounded way out (train.parent_watch: checkpoint then exit; data
prepare's workers: exit, the next prepare resumes). It lives in radial/ because both applications use it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

POLL_S = 1.0


def when_parent_dies(action: Callable[[int], None], name: str = "parent-watch") -> threading.Thread:
    """Start a daemon thread that calls `action(pid of the dead parent)` once, when this process's parent is gone."""
    thread = threading.Thread(target=_watch, args=(os.getppid(), action), name=name, daemon=True)
    thread.start()
    return thread


def _watch(parent: int, action: Callable[[int], None]) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    action(parent)


def say(line: str) -> None:
    """A line on stderr, if there still is one (the parent's terminal or pipe may be gone with it)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
