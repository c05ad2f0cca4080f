"""One process at a time per task: a lock per task, taken before the task writes anything.

``STUDY/locks/STAGE/N.lock`` is locked with flock(2) for as long as the task runs; while it is
held the file describes the holder (Slurm job, host, pid, since when). A second process that
finds the lock taken (a resubmitted array, a hand-made sbatch, a local run beside a Slurm one)
leaves the task alone and says who has it.

Why flock and not an exclusive marker file (O_EXCL): the kernel, and on NFS the server's lock
manager, drops the lock when its holder dies (SIGKILL, a time-limit kill, a node that is gone),
so there is never a stale lock to guess about from process ids on other hosts. The description
is only a description: a holder killed with SIGKILL leaves it behind (``harness status`` trusts
it only while the job it names is running) and the next holder overwrites it. The lock files
stay: removing one while another process waits to open it could let two processes lock two
different files of the same name.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["LockHolder", "TaskLock", "read_holder"]

#: errors of a file system that has no locks (Lustre mounted without -o flock, some FUSE)
_NO_LOCKS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
_warned: set[str] = set()


@dataclass(frozen=True)
class LockHolder:
    host: str = ""
    pid: int = 0
    job: str = ""           #: SLURM_JOB_ID: one per array task (squeue's %A)
    array_task: str = ""    #: ARRAYJOB_INDEX as squeue shows it, '' outside an array
    since: float = 0.0

    @classmethod
    def here(cls) -> "LockHolder":
        array = os.environ.get("SLURM_ARRAY_JOB_ID", "")
        index = os.environ.get("SLURM_ARRAY_TASK_ID", "")
        return cls(host=socket.gethostname(), pid=os.getpid(),
                   job=os.environ.get("SLURM_JOB_ID", ""),
                   array_task=f"{array}_{index}" if array and index else "",
                   since=time.time())

    def describe(self) -> str:
        if not self.pid:
            return "another process (it has not said which yet)"
        job = self.array_task or self.job
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return (f"{'Slurm job ' + job + ' ' if job else ''}on host {self.host}, pid {self.pid}, "
                f"since {when}")


def read_holder(path: Path) -> LockHolder | None:
    """The description in a lock file, or None when there is none (never locked, released,
    or being written)."""
    try:
        data = json.loads(path.read_text() or "null")
        return LockHolder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class TaskLock:
    """``acquire()`` returns None when this process now holds the lock, or the holder when
    another process does; ``release()`` clears the description and unlocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> LockHolder | None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # not inherited by the host programs the task starts (Python's default), so the lock
        # ends with this process and never outlives it in an orphaned child
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return self._other_holder()
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            # running unlocked is what the harness did before locks: say so once per
            # file system, do not stop the study
            mount = str(self.path.parent.parent)
            if mount not in _warned:
                _warned.add(mount)
                print(f"harness: warning: {self.path}: the file system refuses locks "
                      f"({exc.strerror}); tasks run without them (two submissions of one task "
                      f"could then run it at once)", file=sys.stderr)
            self._fd = fd
            return None
        self._fd = fd
        text = json.dumps(asdict(LockHolder.here())) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        return None

    def _other_holder(self) -> LockHolder:
        # the holder writes its description right after locking: give it a moment
        for _ in range(20):
            holder = read_holder(self.path)
            if holder is not None:
                return holder
            time.sleep(0.05)
        return LockHolder()

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        os.close(self._fd)       # closing the only descriptor drops the lock
        self._fd = None
