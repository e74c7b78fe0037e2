"""Embedded Postgres from the pgserver wheel, and what every Postgres URL needs: probe, database.

`EmbeddedPostgres.start` runs a cluster on 127.0.0.1 only, as an unprivileged system user when we
are root (Postgres refuses to run as root); maskline/devservers.py decides when to start one."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

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
    "PG_SUPERUSER",
    "EmbeddedPostgres",
    "database_name",
    "ensure_database",
    "postgres_error",
    "with_database",
]

# Postgres refuses to run as root; this system user owns the embedded cluster instead.
PG_SYSTEM_USER = "maskline"
PG_SUPERUSER = "postgres"


# --------------------------------------------------------------------------- URLs and probes


def database_name(dsn: str) -> str:
    """The database a postgres URL names (libpq's default: the user name)."""
    parts = urlsplit(dsn)
    return parts.path.lstrip("/") or parts.username or PG_SUPERUSER


def with_database(dsn: str, name: str) -> str:
    """The same URL pointing at another database (to reach `postgres` for CREATE DATABASE)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + name))


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


# --------------------------------------------------------------------------- the embedded cluster


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
        bin_dir = package_dir("pgserver") / "pginstall" / "bin"
        if not (bin_dir / "pg_ctl").exists():
            raise ServerUnreachable("no pg_ctl: install maskline[embedded] (the pgserver wheel)")
        pgdata = pgdata.resolve()
        pgdata.mkdir(parents=True, exist_ok=True)
        run_as = _unprivileged_user() if os.geteuid() == 0 else None
        server = cls(pgdata=pgdata, port=0, owned=False, run_as=run_as, _bin=bin_dir)
        with file_lock(pgdata.parent / "postgres.start.lock"):
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
            server.port = free_port()
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
        return port if pid_alive(pid) else None

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
