"""An exclusive lock on a path, held by one process at a time: one trainer per run directory
(``R/.lock``), one read-merge-write of a retention table at a time (``.<table>.lock``).

The primitive is ``fcntl.flock`` on a lock file. The kernel drops a flock when the last
descriptor of the process's open file goes away, so a holder that dies (SIGKILL included) can
never leave a lock that blocks the next one: the file it leaves behind is only a name.

- **Who holds it.** The holder writes ``{"host", "pid", "command", "since"}`` (one JSON line)
  into the file, so that a refused process can name the owner. This is the one write that does
  not go through :mod:`retention.atomic`: an atomic replace would put a new file (a new inode)
  under the name, and the lock lives on the inode. A reader that finds the file empty or its PID
  dead (the new owner has not written yet) looks again for a moment, then says "another process".
- **Removed on release.** The holder deletes the file before it unlocks, so a finished holder
  leaves nothing. Waiters may thus lock a file that is no longer the path's: after locking,
  :meth:`FileLock.acquire` checks that the path still names the file it locked and otherwise
  starts again, the usual protocol for deletable lock files.
- **Forked children** (DataLoader workers) inherit the descriptor, which would keep the lock
  alive after the holder died; each child closes its copy at fork, and can never release or
  delete the parent's lock.
- flock works on local file systems and on NFS (Linux emulates it with POSIX locks there).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from retention.errors import OutputPathError

_HOST = socket.gethostname() or "localhost"
#: Locks this process holds, by descriptor: closed in forked children (see module docstring).
_HELD: dict[int, FileLock] = {}


class LockBusyError(OutputPathError):
    """Another live process holds the lock; ``owner`` says who (None if it could not be read)."""

    def __init__(self, path: Path, owner: LockOwner | None, waited_s: float):
        self.path, self.owner, self.waited_s = path, owner, waited_s
        who = owner.describe() if owner else "another process"
        super().__init__(f"{path} is locked by {who}" + (f" (waited {waited_s:g} s)" if waited_s else ""))


@dataclass(frozen=True)
class LockOwner:
    """The process that holds a lock, as it wrote itself into the lock file."""

    host: str
    pid: int
    command: str

    def describe(self) -> str:
        """``PID 1234 on host X (pipeline train)``."""
        return f"PID {self.pid} on host {self.host} ({self.command})"

    def is_alive(self) -> bool:
        """False only when the PID is of this host and gone (another host's cannot be checked)."""
        if self.host != _HOST:
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            return True
        return True


def process_label() -> str:
    """What this process is, for the owner record: ``pipeline train`` for the CLI (also under
    ``torchrun -m pipelines.cli``), else the script's name."""
    argv = sys.argv or [""]
    script = Path(argv[0]).name
    if script in ("pipeline", "cli.py", "__main__.py") and len(argv) > 1 and not argv[1].startswith("-"):
        return f"pipeline {argv[1]}"
    return script if script and not script.startswith("-") else "python"  # not "-c"


def read_owner(path: str | os.PathLike, settle_s: float = 0.5) -> LockOwner | None:
    """The owner recorded in lock file ``path``; None if none could be read within ``settle_s``
    (a new holder writes itself just after locking, over a dead one's record)."""
    deadline = time.monotonic() + settle_s
    while True:
        owner = _parse_owner(path)
        if (owner is not None and owner.is_alive()) or time.monotonic() >= deadline:
            return owner
        time.sleep(0.02)


def _parse_owner(path: str | os.PathLike) -> LockOwner | None:
    try:
        record = json.loads(Path(path).read_text())
        return LockOwner(host=str(record["host"]), pid=int(record["pid"]), command=str(record["command"]))
    except (OSError, ValueError, TypeError, KeyError):  # missing, empty, half-written or foreign
        return None


class FileLock:
    """``with FileLock(path).acquire(timeout=...):`` an exclusive lock on ``path`` (see module
    docstring). ``timeout`` 0 tries once, a number of seconds waits that long, None waits for
    good; :class:`LockBusyError` when the lock stays taken. Missing parent folders are created
    and, if still empty, removed again on release."""

    def __init__(self, path: str | os.PathLike, *, command: str | None = None):
        self.path = Path(path)
        self.command = command or process_label()
        self._fd: int | None = None
        self._created_dirs: list[Path] = []

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._fd is not None

    def acquire(self, timeout: float | None = 0.0, poll_s: float = 0.05) -> FileLock:
        """Take the lock (waiting up to ``timeout`` seconds) and record this process as owner."""
        if self.held:
            raise RuntimeError(f"{self.path} is already locked by this FileLock")
        started = time.monotonic()
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                waited = time.monotonic() - started
                if timeout is not None and waited >= timeout:
                    self._remove_created_dirs()
                    raise LockBusyError(self.path, read_owner(self.path), round(waited, 1)) from None
                time.sleep(poll_s)
                continue
            except OSError as error:  # e.g. ENOLCK: a file system without locks
                os.close(fd)
                self._remove_created_dirs()
                raise OutputPathError(f"cannot lock {self.path}: {error.strerror or error}") from None
            except BaseException:
                os.close(fd)
                raise
            if self._still_ours(fd):
                break
            os.close(fd)  # the holder before us removed the file as we waited on it: start again
        self._fd = fd
        _HELD[fd] = self
        self._write_owner(fd)
        return self

    def release(self) -> None:
        """Remove the lock file and unlock; a no-op when not held."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        _HELD.pop(fd, None)
        try:
            if self._still_ours(fd):  # never delete a file that is not the one we locked
                self.path.unlink()
        finally:
            os.close(fd)  # closing the last descriptor drops the flock
            self._remove_created_dirs()

    def __enter__(self) -> FileLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        # a holder dropped without release (an object never used to the end) frees the lock
        with contextlib.suppress(Exception):
            self.release()

    # ------------------------------------------------------------------ internals
    def _open(self) -> int:
        for _ in range(100):  # a folder we need may be removed by a holder that gives up
            try:
                self._make_parents()
                return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                continue
            except OSError as error:  # a read-only folder, a file where a folder goes, ...
                self._remove_created_dirs()
                raise OutputPathError(f"cannot create the lock file {self.path}: {error.strerror or error}") from None
        raise OutputPathError(f"cannot create the lock file {self.path}: its folder keeps disappearing")

    def _make_parents(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
                self._created_dirs.append(folder)

    def _remove_created_dirs(self) -> None:
        """Leave no empty folder behind that only the lock needed (a refused or failed run)."""
        for folder in reversed(self._created_dirs):
            with contextlib.suppress(OSError):  # not empty, or gone: someone else's now
                folder.rmdir()
        self._created_dirs = []

    def _still_ours(self, fd: int) -> bool:
        try:
            here = os.stat(self.path)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _write_owner(self, fd: int) -> None:
        record = {"host": _HOST, "pid": os.getpid(), "command": self.command,
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(fd, 0)  # a killed holder's record may still be there
        os.pwrite(fd, data, 0)


def _close_in_child() -> None:
    """After fork, in the child: drop the inherited descriptors (the parent keeps the locks)."""
    for fd, lock in list(_HELD.items()):
        lock._fd = None
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)
