"""What the embedded servers share: their error, their timeouts, and finding and starting processes.

Used by maskline/devservers.py (Redis, and the entry point) and maskline/devpostgres.py."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "PROBE_TIMEOUT_S",
    "START_TIMEOUT_S",
    "ServerUnreachable",
    "file_lock",
    "free_port",
    "package_dir",
    "pid_alive",
]

PROBE_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0


class ServerUnreachable(RuntimeError):
    """A server named explicitly in the settings does not answer (or could not be started)."""

    def __repr__(self) -> str:
        return f"ServerUnreachable({str(self)!r})"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    # Two workers starting at once must not both start a server on the same data directory.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it: we only want its bundled binaries,
    and importing pgserver creates lock files and warns about XDG_RUNTIME_DIR."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent") / name
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
