"""One trainer per workdir: an exclusive lock on workdir/train.lock, held for the whole run.

`hold` takes `fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file and writes the holder (pid, host, start
time) into it; a second trainer on the same workdir is refused at once with WorkdirBusyError naming the
holder. The kernel releases a flock when its process ends, however it ends (SIGKILL and out-of-memory kills
included), so a lock never outlives its trainer and never blocks a resume; the file itself stays, naming
its last holder. flock needs a filesystem that supports it (every local one; NFS emulates it with POSIX
locks, which also hold between hosts). In a multi-host run only process 0 takes the lock: the other
processes follow process 0 and share its workdir.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "train.lock"


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir's lock; the message names it (pid, host, start time)."""


def _holder(fd: int) -> str:
    """The holder recorded in the lock file, in words."""
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {record['pid']} on host {record['host']}, started {record['started']}"
    except (ValueError, KeyError, TypeError, OSError):  # the holder is starting and has not written it yet
        return "a process that has not yet recorded itself"


@contextlib.contextmanager
def hold(workdir: str | Path, enabled: bool = True) -> Iterator[Path | None]:
    """Holds workdir/train.lock (created with the workdir if needed) while the block runs; yields its path.

    WorkdirBusyError, naming the holder, when another process holds it. `enabled` False (processes other
    than 0 of a multi-host run) holds nothing and yields None.
    """
    if not enabled:
        yield None
        return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"{workdir} is in use by another trainer: {_holder(fd)} (lock file {path}). Wait for it to "
                "finish or stop it; only one trainer may write a workdir"
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode("utf-8"), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock
