"""`maskline audit erase`: one erasure that reaches every copy of a person's number, and the check
that proves it (docs/audit.md, "Personal data and erasure").

Order matters:
1. Redis (sessions/erasure.py): the number's sessions are closed and deleted (emitting their
   events), its pairs, sticky-proxy and opt-out keys deleted;
2. the audit writer catches up (audit/erase.py `catch_up`): every event emitted so far, the ones of
   step 1 included, is stored -- under the number's subject -- and deleted from its stream;
   dead letters holding the number are deleted (they are never stored);
3. Postgres: the number's subject is crypto-shredded (audit/erase.py `erase_number`);
4. the check (`find_copies`): every key name and value of the Maskline key space in Redis and
   every text-like column of every table in Postgres is searched for the number's digits.

`find_copies` is meant to be reused (the tests call it): a copy it finds is a copy erasure missed."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
import phonenumbers
import redis.asyncio as aioredis

from audit.erase import E164, CatchUp, catch_up, erase_number, scrub_dead_letters
from core.errors import InvalidParameter
from pool.numbers import mask
from sessions.blocklist import forget_identifier
from sessions.erasure import RedisErasure, erase_number_from_redis

__all__ = ["Copy", "ErasureReport", "number_pattern", "find_copies", "erase_everywhere", "erase_in_words"]

# Separators a number may be written with ("+1 (415) 555-0101", "415.555.0101").
_SEPARATORS: Final = "[-. ()]{0,2}"
# Shortest digit run worth searching for: shorter ones would match unrelated data.
_MIN_DIGITS: Final = 6
_SCAN_COUNT: Final = 1000
# Column types searched as text; bytea is searched for the digits as bytes.
_TEXT_TYPES: Final = frozenset(
    {"text", "character varying", "character", "json", "jsonb", "ARRAY", "USER-DEFINED", "xml"}
)
_COLUMNS: Final = """
SELECT c.table_schema, c.table_name, c.column_name, c.data_type
  FROM information_schema.columns c
  JOIN pg_class k ON k.oid = format('%I.%I', c.table_schema, c.table_name)::regclass
 WHERE c.table_schema NOT IN ('pg_catalog', 'information_schema')
   AND c.table_schema NOT LIKE 'pg_toast%'
   AND k.relkind IN ('r', 'p', 'm') AND NOT k.relispartition
 ORDER BY c.table_schema, c.table_name, c.ordinal_position
"""


@dataclass(frozen=True)
class Copy:
    """A place that still holds the number: `store` redis or postgres, `where` the key (and field)
    or schema.table.column, `detail` the Redis type or how many rows (the number masked)."""

    store: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.store}: {self.where} ({self.detail})"


@dataclass
class ErasureReport:
    redis: RedisErasure
    drained: CatchUp
    dead_letters: int
    events: int  # stored events that concerned the number (now unreadable)
    copies: list[Copy] = field(default_factory=list)


def _digits(number_e164: str) -> str:
    """The national significant number (what every written form of the number contains), else
    the E.164 digits."""
    digits = "".join(c for c in number_e164 if c.isdigit())
    try:
        nsn = str(phonenumbers.national_significant_number(phonenumbers.parse(number_e164, None)))
    except phonenumbers.NumberParseException:
        return digits
    return nsn if len(nsn) >= _MIN_DIGITS and nsn in digits else digits


def number_pattern(number_e164: str) -> str:
    """A regular expression (Python and Postgres alike) matching the number in any usual form:
    E.164, digits only, national, with spaces, dashes, dots or parentheses."""
    return _SEPARATORS.join(_digits(number_e164))


def _masked(text: str, regex: re.Pattern[str], number_e164: str) -> str:
    return regex.sub(mask(number_e164), text)


async def find_copies(
    redis: aioredis.Redis, pg: asyncpg.Pool, number_e164: str, *, match: str = "ml:*"
) -> list[Copy]:
    """Every copy of the number left in Redis (key names and values of the keys matching `match`,
    every type) and in Postgres (every text-like column of every table)."""
    return await find_copies_in_redis(redis, number_e164, match=match) + await find_copies_in_postgres(
        pg, number_e164
    )


async def find_copies_in_redis(redis: aioredis.Redis, number_e164: str, *, match: str = "ml:*") -> list[Copy]:
    regex = re.compile(number_pattern(number_e164))
    copies: list[Copy] = []

    def hit(key: str, what: str, kind: str, *values: Any) -> None:
        for value in values:
            if value is not None and regex.search(_text(value)):
                copies.append(Copy("redis", _masked(key, regex, number_e164) + what, kind))
                return

    async for raw in redis.scan_iter(match=match, count=_SCAN_COUNT):
        key = _text(raw)
        kind = _text(await redis.type(key))
        hit(key, "", f"{kind}, key name", key)
        if kind == "string":
            hit(key, "", kind, await redis.get(key))
        elif kind == "hash":
            async for f, v in redis.hscan_iter(key, count=_SCAN_COUNT):
                hit(key, f" field {_masked(_text(f), regex, number_e164)}", kind, f, v)
        elif kind == "set":
            async for member in redis.sscan_iter(key, count=_SCAN_COUNT):
                hit(key, "", kind, member)
        elif kind == "zset":
            async for member, _score in redis.zscan_iter(key, count=_SCAN_COUNT):
                hit(key, "", kind, member)
        elif kind == "list":
            for value in await redis.lrange(key, 0, -1):
                hit(key, "", kind, value)
        elif kind == "stream":
            start = "-"
            while batch := await redis.xrange(key, start, "+", count=_SCAN_COUNT):
                for entry_id, entry in batch:
                    hit(
                        key,
                        f" entry {_text(entry_id)}",
                        kind,
                        *(x for kv in (entry or {}).items() for x in kv),
                    )
                start = "(" + _text(batch[-1][0])
    return copies


async def find_copies_in_postgres(pg: asyncpg.Pool, number_e164: str) -> list[Copy]:
    pattern = number_pattern(number_e164)
    needle = _digits(number_e164).encode()
    tables: dict[str, list[tuple[str, str]]] = {}
    async with pg.acquire() as conn:
        for schema, table, column, data_type in await conn.fetch(_COLUMNS):
            if data_type in _TEXT_TYPES:
                tables.setdefault(f"{_quote(schema)}.{_quote(table)}", []).append((column, "text"))
            elif data_type == "bytea":
                tables.setdefault(f"{_quote(schema)}.{_quote(table)}", []).append((column, "bytea"))
        copies: list[Copy] = []
        for table, columns in tables.items():
            args: list[Any] = []
            tests = []
            for column, how in columns:
                if how == "text":
                    if pattern not in args:
                        args.append(pattern)
                    tests.append(
                        f"count(*) FILTER (WHERE {_quote(column)}::text ~ ${args.index(pattern) + 1})"
                    )
                else:
                    if needle not in args:
                        args.append(needle)
                    at = args.index(needle) + 1
                    tests.append(f"count(*) FILTER (WHERE position(${at}::bytea IN {_quote(column)}) > 0)")
            row = await conn.fetchrow(f"SELECT {', '.join(tests)} FROM {table}", *args)
            assert row is not None
            for (column, _), n in zip(columns, row, strict=True):
                if n:
                    copies.append(Copy("postgres", f"{table}.{_quote(column)}", f"{n} row(s)"))
    return copies


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


async def erase_everywhere(
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    number_e164: str,
    *,
    actor: str,
    drain_timeout_s: float = 120.0,
) -> ErasureReport:
    """Steps 1-4 of the module docstring; `copies` in the report lists what is left (should be none)."""
    if not E164.match(number_e164):  # before anything is touched (erase_number checks it too)
        raise InvalidParameter(f"number must be E.164 (+ and up to 15 digits), got {number_e164!r}")
    redis_counts = await erase_number_from_redis(redis, number_e164)
    # Block lists hold the number itself (sessions/blocklist.py): it leaves them too.
    await forget_identifier(redis, pg, number_e164)
    drained = await catch_up(
        redis, pg, consumer=f"erase-{socket.gethostname()}-{os.getpid()}", timeout_s=drain_timeout_s
    )
    dead = await scrub_dead_letters(redis, re.compile(number_pattern(number_e164)))
    events = await erase_number(pg, number_e164, actor=actor)
    copies = await find_copies(redis, pg, number_e164)
    return ErasureReport(redis_counts, drained, dead, events, copies)


async def erase_in_words(redis: aioredis.Redis, pg: asyncpg.Pool, number_e164: str, actor: str) -> str:
    """erase_everywhere, its report in one sentence (the console's erasure form)."""
    report = await erase_everywhere(redis, pg, number_e164, actor=actor)
    r = report.redis
    left = f"; WARNING: {len(report.copies)} copy(ies) left" if report.copies else "; no copy left"
    return (
        f"{r.sessions_deleted} session(s) deleted from Redis ({r.sessions_closed} live, closed first), "
        f"{report.events} stored audit event(s) no longer reveal it{left}"
    )
