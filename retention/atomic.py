"""Atomic file writes, shared by every stage that writes a file (tables here; checkpoints, metrics,
summaries and figures in ``rmaat`` and ``pipelines``).

One rule for all of them: the bytes go to a temp file beside the target, are flushed to disk
(``fsync``), and replace the target in one ``os.replace``, so a reader sees the old file or
the new one, never half of one, and a kill loses nothing that was already written.

- A symlinked target is written *through*: the link's final target is replaced (a temp file
  beside it), the link itself stays a link.
- An existing target that is not a regular file (a device node such as /dev/null, a FIFO, a
  directory) is refused: replacing it by a regular file is never what the user meant.
- Temp files are named ``.<name>.<host>-<pid>-<random>.tmp``. A kill during a write leaves one
  behind; the next write of the same target removes those whose process is gone (and the
  unnamed ones of older versions), never a live writer's.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from retention.errors import OutputPathError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_OURS = re.compile(r"^(?P<host>\w+)-(?P<pid>\d+)-[0-9a-f]{12}$")


def output_path(path: str | os.PathLike) -> Path:
    """The file that writing ``path`` replaces: symlinks followed to their final target.

    OutputPathError if that target exists and is not a regular file."""
    target = Path(os.path.realpath(Path(path).expanduser()))
    try:
        mode = target.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):  # a new file (its parent is checked by the write)
        return target
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a device, FIFO or socket)"
        shown = f"{path}" + (f" (-> {target})" if str(target) != str(path) else "")
        raise OutputPathError(f"{shown} is {kind}; refusing to replace it: give the path of a regular file")
    return target


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_temp_files(target: Path) -> list[Path]:
    """Temp files of ``target`` left by writers that no longer run (this host's dead PIDs, and
    temp files of older versions, which carried no PID)."""
    prefix, suffix = f".{target.name}.", ".tmp"
    stale = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(target.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
                continue
            match = _OURS.match(name[len(prefix):-len(suffix)])
            if match and (match["host"] != _HOST or _pid_alive(int(match["pid"]))):
                continue  # another machine's (cannot tell) or a live writer's
            stale.append(Path(entry.path))
    return stale


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the directory); best effort elsewhere."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_path(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temp_path)`` (for writers that take a file name, e.g. netCDF), fsync the
    result and move it onto ``path``'s target. Returns the target written."""
    target = output_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in stale_temp_files(target):
        old.unlink(missing_ok=True)
    tmp = _temp_name(target)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(target.parent)
    return target


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a new binary file and move it onto ``path``'s target (the
    file gets the usual umask permissions: it is created by ``open``, not ``mkstemp``)."""
    def to_file(tmp: Path) -> None:
        with open(tmp, "xb") as handle:
            write(handle)

    return atomic_write_path(path, to_file)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda handle: handle.write(data))
