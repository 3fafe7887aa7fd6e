"""Writing a file so that readers only ever see its old or its complete new content.

Used for checkpoints and ``last_checkpoint`` (a kill in the middle of a save must not leave a truncated file
that ``--resume`` would pick) and for generated dataset files (concurrent ``launch`` workers may write the
same file).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO, Any

# Temp files are named after the target, the host and the writing process, so that a later run can tell a
# leftover of a killed save (process gone) from a save in progress (process alive).
_HOST = socket.gethostname().replace(".", "_")
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<host>[^.]+)\.(?P<pid>\d+)\.tmp$")


def _temp_path(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}.{_HOST}.{os.getpid()}.tmp")


def _fsync_directory(directory: str) -> None:
    """Make a rename durable; some file systems cannot fsync a directory, which only weakens crash safety."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """Open ``path`` for writing so that readers only ever see its old or its complete new content.

    Writes go to a temp file in the same directory (same file system, so the rename is atomic), which is
    renamed over ``path``; with ``durable`` the data and the rename are fsynced, so they also survive a
    machine crash (files that can be regenerated skip that cost). If the block raises, the temp file is
    removed; if the process is killed, the temp file stays behind and :func:`remove_stale_temp_files`
    deletes it later.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_open is for writing, got mode {mode!r}")
    path = os.fspath(path)
    tmp = _temp_path(path)
    try:
        with open(tmp, mode) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if durable:
        _fsync_directory(os.path.dirname(os.path.abspath(path)))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temp_files(directory: str) -> list[str]:
    """Delete temp files of saves on this host whose process is gone; return their names."""
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _TEMP_NAME.match(name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            with suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed.append(name)
    return removed
