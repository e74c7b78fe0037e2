"""`maskline keys list`: every API key, revoked ones included, never a secret (only its hash is
stored: migrations/0001_core.sql)."""

from __future__ import annotations

import datetime as dt
from typing import Final

import asyncpg

from maskline.numbers_cli import table

__all__ = ["print_keys"]

LIST_KEYS: Final = """
SELECT sid, friendly_name, permissions, service_sids, date_created, date_revoked
  FROM api_keys ORDER BY date_created, sid
"""


def _when(value: dt.datetime | None) -> str:
    return "-" if value is None else value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def print_keys(pg: asyncpg.Pool | asyncpg.Connection) -> int:
    rows = await pg.fetch(LIST_KEYS)
    print(
        table(
            ("NAME", "SID", "SCOPE", "PERMISSIONS", "CREATED", "REVOKED"),
            [
                (
                    row["friendly_name"],
                    row["sid"],
                    ",".join(row["service_sids"]) if row["service_sids"] is not None else "all",
                    ",".join(row["permissions"]),
                    _when(row["date_created"]),
                    _when(row["date_revoked"]),
                )
                for row in rows
            ],
        )
    )
    print(f"{len(rows)} key(s)")
    return 0
