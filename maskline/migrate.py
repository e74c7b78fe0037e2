"""Forward-only schema migrations: migrations/NNNN_*.sql, each applied once in its own transaction.

The SQL files ship as package data of the `migrations` package, so an installed (non-editable)
Maskline finds them where a checkout does."""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import asyncpg

__all__ = ["MIGRATIONS_DIR", "Migration", "find_migrations", "apply_migrations", "applied_versions"]

log = logging.getLogger("maskline.migrate")

MIGRATIONS_DIR: Final = Path(str(importlib.resources.files("migrations")))
_FILE_NAME: Final = re.compile(r"^(\d{4})_[A-Za-z0-9_\-]+\.sql$")

# Held for the whole run: two workers starting together would otherwise both see a migration
# as pending and the second would fail half-way (or, for an idempotent script, apply it twice).
# Advisory locks are per database, so runs against different databases do not wait on each other.
ADVISORY_LOCK_KEY: Final = 0x6D61736B6C696E65  # "maskline"

CREATE_TABLE: Final = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_VERSIONS: Final = "SELECT version FROM schema_migrations"
INSERT_VERSION: Final = "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, now())"
LOCK: Final = "SELECT pg_advisory_lock($1)"
UNLOCK: Final = "SELECT pg_advisory_unlock($1)"

Migration = tuple[str, Path]  # (version, file); the version is the file name without .sql


def find_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migration files in the order they apply (by name, so by their NNNN prefix)."""
    files = sorted(p for p in directory.iterdir() if _FILE_NAME.match(p.name))
    return [(p.stem, p) for p in files]


async def applied_versions(conn: asyncpg.Connection) -> set[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {row["version"] for row in await conn.fetch(SELECT_VERSIONS)}


async def apply_migrations(
    target: asyncpg.Connection | asyncpg.Pool | str, *, directory: Path = MIGRATIONS_DIR
) -> list[str]:
    """Apply the pending migrations; returns the versions applied by this call, in order."""
    async with _connection(target) as conn:
        await conn.execute(LOCK, ADVISORY_LOCK_KEY)
        try:
            await conn.execute(CREATE_TABLE)
            done = await applied_versions(conn)
            applied: list[str] = []
            for version, path in find_migrations(directory):
                if version in done:
                    continue
                sql = path.read_text()
                # One transaction per file: a failing migration leaves no half-made schema and
                # is not recorded, so the fixed file applies cleanly next time.
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(INSERT_VERSION, version)
                log.info("applied migration %s", version)
                applied.append(version)
            return applied
        finally:
            await conn.execute(UNLOCK, ADVISORY_LOCK_KEY)


@contextlib.asynccontextmanager
async def _connection(target: asyncpg.Connection | asyncpg.Pool | str) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(target, str):
        conn = await asyncpg.connect(target)
        try:
            yield conn
        finally:
            await conn.close()
    elif isinstance(target, asyncpg.Pool):
        async with target.acquire() as conn:
            yield conn
    else:
        yield target
