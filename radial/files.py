"""Durable, shareable output files: fsync before a rename makes it visible, and modes that follow the user's umask.

safetensors writes through a private temporary file (mode 0600), so a LoRA or checkpoint tensor file would be
unreadable by the rest of a cluster group whatever the umask; `share_like_umask` gives it the mode any other
file gets (0666 minus the umask).
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def share_like_umask(path: str | Path) -> None:
    """Give a file the mode a plain `open(path, "w")` would have (0666 minus the umask); folders are left alone."""
    path = Path(path)
    if path.is_file():
        os.chmod(path, 0o666 & ~current_umask())


def fsync_file(path: str | Path) -> None:
    """Flush a file's data to disk (on Linux an fd opened read-only flushes the file's dirty pages too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new names, renames); a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file under `root`, then every folder (deepest first), then `root` itself."""
    root = Path(root)
    folders = []
    for dirpath, _, filenames in os.walk(root):
        folders.append(dirpath)
        for name in filenames:
            fsync_file(Path(dirpath) / name)
    for folder in reversed(folders):
        fsync_dir(folder)
