"""`maskline status [--service NAME_OR_SID] [--top N]`: how each Service's pool stands, for an
operator at a terminal: its numbers (reserved among them), live sessions, the (participant, proxy)
pairs live sessions hold, the pairs cooling off after their session closed, the busiest numbers,
and the audit writer's lag on the Service's event stream. Read only; no phone number of a
participant is shown (pool numbers are the operator's own)."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from core import keys
from core.connections import redis_client
from core.settings import Settings
from maskline.numbers_cli import table

__all__ = ["add_status_command", "run_status"]

LIVE = frozenset({"open", "in-progress"})
SCAN_BATCH = 1000


def add_status_command(sub: Any) -> None:
    text = "per Service: numbers, live sessions, pairs in use and cooling off, busiest numbers, audit lag"
    status = sub.add_parser("status", help=text, description=text)
    status.add_argument("--service", help="only this Service (its SID or UniqueName)")
    status.add_argument(
        "--top", type=int, default=3, help="how many of the busiest numbers to show (default 3)"
    )


async def run_status(args: argparse.Namespace, settings: Settings) -> int:
    pg = await asyncpg.connect(settings.database_url)
    redis = redis_client(settings.redis_url, max_connections=2)
    try:
        rows = await pg.fetch(
            "SELECT sid, unique_name FROM services WHERE $1::text IS NULL OR sid = $1 OR unique_name = $1 "
            "ORDER BY date_created",
            args.service,
        )
        if not rows:
            print(f"no Service {args.service}" if args.service else "no Services yet")
            return 1 if args.service else 0
        lines = []
        for row in rows:
            numbers = await pg.fetch(
                "SELECT phone_number, is_reserved FROM phone_numbers WHERE service_sid = $1", row["sid"]
            )
            lines.append(await _service_line(redis, row["sid"], row["unique_name"], numbers, args.top))
        headers = [
            "service",
            "sid",
            "numbers",
            "reserved",
            "live sessions",
            "pairs in use",
            "cooling",
            "audit lag",
        ]
        print(table(headers, [line[:-1] for line in lines]))
        for line in lines:
            if line[-1]:
                print(f"busiest numbers of {line[0]}: {line[-1]}")
        return 0
    finally:
        await pg.close()
        await redis.aclose()


async def _service_line(
    redis: aioredis.Redis, ks: str, name: str, numbers: list[asyncpg.Record], top: int
) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for n in numbers:
            pipe.hget(keys.number(ks, n["phone_number"]), "in_use")
        in_use = [int(v or 0) for v in await pipe.execute()] if numbers else []
    raw: list[Any] = await redis.zrange(keys.sessions_by_created(ks), 0, -1)
    sessions = [str(s.decode() if isinstance(s, bytes) else s) for s in raw]
    async with redis.pipeline(transaction=False) as pipe:
        for sid in sessions:
            pipe.hget(keys.session(ks, sid), "status")
        statuses = await pipe.execute() if sessions else []
    live = sum(1 for s in statuses if (s.decode() if isinstance(s, bytes) else s) in LIVE)
    pairs = 0
    async for _ in redis.scan_iter(match=keys.pair(ks, "*", "*"), count=SCAN_BATCH):
        pairs += 1
    held = sum(in_use)
    lag = "-"
    try:
        groups = await redis.xinfo_groups(keys.events(ks))
        audit = next((g for g in groups if g.get("name") in ("audit", b"audit")), None)
        lag = str(int(audit.get("lag") or 0)) if audit else str(await redis.xlen(keys.events(ks)))
    except aioredis.ResponseError:  # no stream yet
        lag = "0"
    busiest = sorted(zip(in_use, (n["phone_number"] for n in numbers), strict=True), reverse=True)[:top]
    shown = ", ".join(f"{number} ({count})" for count, number in busiest if count)
    reserved = sum(1 for n in numbers if n["is_reserved"])
    return [
        name,
        ks,
        str(len(numbers)),
        str(reserved),
        str(live),
        str(held),
        str(max(0, pairs - held)),
        lag,
        shown,
    ]
