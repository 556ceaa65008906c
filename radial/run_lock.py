"""One live run per output folder: an exclusive `fcntl.flock` on `<folder>/.run.lock`, held by one process.

Two runs writing one folder interleave their files: checkpoints rotated by both (one deleting the checkpoint the
other reads), a LoRA or a shard replaced under the other's feet. The lock is the kernel's and belongs to the open
file, so a crash or `kill -9` releases it: there is never a stale lock to remove by hand. The file stays; it holds
the holder's host, pid and start time (JSON) for the refusal message. Network filesystems: NFSv4 emulates flock
with byte-range locks across clients; Lustre needs its `flock` mount option (where locking is unsupported the run
goes on unprotected, with a warning).

A launch of several processes is one run: only rank 0 locks, and its verdict is broadcast so that every rank raises
the same refusal and none waits for the others (`lock_for_launch`). A process may take a folder it already holds
again (counted), as tests build several trainers on one folder in one process. Children forked while the lock is
held (data-loader workers) share the open file and so keep it held until they exit too; exec'd programs do not.

It lives in radial/ because both applications use it: train/ (output_dir) and data/ (prepare's --out).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

from radial.errors import RadialError

LOCK_FILE = ".run.lock"


class FolderInUseError(RadialError, RuntimeError):
    """Another live process holds the folder's run lock."""


@dataclass
class _Held:
    fd: int
    count: int
    pid: int


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


class RunLock:
    """A folder's lock as held by this process; `release()` (or garbage collection, or exit) lets it go."""

    def __init__(self, key: str | None) -> None:
        self._finalizer = weakref.finalize(self, _release, key)

    def release(self) -> None:
        """Let the lock go (once; later calls do nothing)."""
        self._finalizer()

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | Path, what: str = "output_dir") -> RunLock:
    """Lock `folder` (created if missing) for this process, or raise FolderInUseError naming the live holder;
    `what` names the folder's setting in the message."""
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(root)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None and held.pid == os.getpid():  # a fork's copy of the table is not its own
            held.count += 1
            return RunLock(key)
        path = os.path.join(key, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):  # ENOLCK, EOPNOTSUPP: no locking
                os.close(fd)
                print(
                    f"warning: cannot lock {path} ({e.strerror}): another run could write {what} too", file=sys.stderr
                )
                return RunLock(None)
            holder = _holder(fd)
            os.close(fd)
            raise FolderInUseError(f"{what} {root} is in use by a live run ({holder})") from None
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        _HELD[key] = _Held(fd, 1, os.getpid())
    return RunLock(key)


def lock_for_launch(folder: str | Path, what: str = "output_dir") -> RunLock:
    """`lock_folder` on rank 0 of an initialised torch.distributed group, the verdict shared with every rank (each
    raises the same error); other ranks get a RunLock that holds nothing. Without a group: `lock_folder`."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return lock_folder(folder, what)
    lock, answer = RunLock(None), [None]
    if dist.get_rank() == 0:
        try:
            lock = lock_folder(folder, what)
        except Exception as e:  # every rank must hear the verdict, or the others would wait for rank 0 forever
            answer = [e]
    dist.broadcast_object_list(answer, src=0)
    if answer[0] is not None:
        raise answer[0]
    return lock


def _holder(fd: int) -> str:
    """'host H, pid P, since T' from the lock file's record (the holder may not have written it yet)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"null")
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["since"]))
        return f"host {record['host']}, pid {record['pid']}, since {since}"
    except (OSError, ValueError, TypeError, KeyError):
        return f"its {LOCK_FILE} names no holder yet"


def _release(key: str | None) -> None:
    if key is None:
        return
    with _GUARD:
        held = _HELD.get(key)
        if held is None or held.pid != os.getpid():
            return
        held.count -= 1
        if held.count:
            return
        del _HELD[key]
        try:
            os.ftruncate(held.fd, 0)  # before unlocking: the next holder's record must not be wiped
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)
