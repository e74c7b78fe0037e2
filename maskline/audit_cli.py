"""`maskline audit ...`: the audit subcommands. maskline/cli.py calls `add_audit_commands` to build
the argparse group and `run(args, settings)` to execute one; `run` returns the exit code."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import re
import signal
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import redis.asyncio as aioredis

from audit.queries import EXPORT_FORMATS, AuditEvent, export_events
from audit.retention import prune
from audit.verify import verify
from audit.writer import AuditWriter
from core.connections import redis_client
from core.errors import InvalidParameter
from core.events import emit_event
from core.lease import Lease, run_while_holding
from core.settings import Settings
from maskline.erasure import erase_everywhere

__all__ = ["add_audit_commands", "run", "parse_duration"]

_DURATION: Final = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`400d`, `12w`, `36h` ... as a timedelta (argparse type)."""
    m = _DURATION.match(text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"expected a duration like 400d, 12w or 36h, got {text!r}")
    return timedelta(**{_UNITS[m[2]]: int(m[1])})


def _timestamp(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an ISO 8601 date or time, got {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def add_audit_commands(subparsers: Any) -> argparse.ArgumentParser:
    audit = subparsers.add_parser("audit", help="the audit log: writer, verify, erase, prune, export")
    sub = audit.add_subparsers(dest="audit_command", required=True)

    writer = sub.add_parser("writer", help="drain the event streams into Postgres until stopped")
    writer.add_argument("--consumer", default=f"{socket.gethostname()}-{os.getpid()}")
    writer.add_argument("--batch-size", type=int, default=2000)

    check = sub.add_parser("verify", help="recompute the hash chains; exit 1 at a broken link")
    check.add_argument("--service", help="only this Service's chains (KS...)")

    erase = sub.add_parser(
        "erase", help="erase a person's number everywhere (Redis, then the audit log; GDPR); audited"
    )
    erase.add_argument("--number", required=True, help="E.164, e.g. +15551234567")
    erase.add_argument("--actor", default=getpass.getuser(), help="who asked (recorded in the log)")

    retention = sub.add_parser("prune", help="drop whole months older than a duration; audited")
    retention.add_argument("--older-than", type=parse_duration, required=True, help="e.g. 400d")

    export = sub.add_parser("export", help="export events as CSV or JSON Lines")
    export.add_argument("--since", type=_timestamp)
    export.add_argument("--until", type=_timestamp)
    export.add_argument("--number", help="participant number (E.164)")
    export.add_argument("--proxy-number", help="proxy number (E.164)")
    export.add_argument("--service", action="append", help="Service sid (repeatable); default every Service")
    export.add_argument("--session", help="session sid (KC...)")
    export.add_argument("--type", action="append", dest="types", help="event type (repeatable)")
    export.add_argument("--format", choices=EXPORT_FORMATS, default="csv")
    export.add_argument("-o", "--output", required=True, help="file to write ('-' for stdout)")
    parser: argparse.ArgumentParser = audit
    return parser


async def run(args: argparse.Namespace, settings: Settings) -> int:
    pg = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    redis = redis_client(settings.redis_url, max_connections=8)
    try:
        command = args.audit_command
        if command == "writer":
            return await _writer(args, redis, pg)
        if command == "verify":
            return await _verify(args, pg)
        if command == "erase":
            return await _erase(args, redis, pg)
        if command == "prune":
            dropped = await prune(pg, older_than=args.older_than, actor=getpass.getuser())
            print(f"dropped {len(dropped)} partition(s): {', '.join(dropped) or '-'}")
            return 0
        if command == "export":
            return await _export(args, redis, pg)
        raise ValueError(f"unknown audit command {command!r}")
    finally:
        await redis.aclose()
        await pg.close()


async def _writer(args: argparse.Namespace, redis: aioredis.Redis, pg: asyncpg.Pool) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    writer = AuditWriter(redis, pg, consumer=args.consumer, batch_size=args.batch_size)
    print(f"audit writer {args.consumer} running; Ctrl-C to stop", file=sys.stderr)
    # One writer at a time across hosts (core/lease.py), like the one `maskline serve` runs.
    lease = Lease(redis, "audit-writer", ttl_s=Settings.from_env().lease_ttl_s)

    async def write(duty_stop: asyncio.Event, fence: int) -> None:
        await writer.run(duty_stop)

    await run_while_holding(lease, write, stop)
    print(f"audit writer stopped after storing {writer.stored} events", file=sys.stderr)
    return 0


async def _erase(args: argparse.Namespace, redis: aioredis.Redis, pg: asyncpg.Pool) -> int:
    """Redis, then the writer catches up, then Postgres, then the check (maskline/erasure.py)."""
    try:
        report = await erase_everywhere(redis, pg, args.number, actor=args.actor)
    except InvalidParameter as err:
        print(f"error: {err.message}", file=sys.stderr)
        return 2
    r = report.redis
    print(
        f"redis: {r.sessions_deleted} session(s) deleted ({r.sessions_closed} live, closed first), "
        f"{r.keys_deleted} key(s) deleted ({r.participants} participant(s), {r.pairs} pair(s), "
        f"{r.last} sticky, {r.optouts} opt-out(s)) in {r.services} Service(s)"
    )
    print(
        f"audit writer caught up: {report.drained.stored} entries stored, "
        f"{report.dead_letters} dead letter(s) deleted"
    )
    print(f"erased {args.number}: {report.events} stored events no longer reveal it")
    if report.drained.left:
        print(
            f"WARNING: {report.drained.left} event(s) were still waiting in Redis; "
            "repeat the erasure once the audit writer has caught up",
            file=sys.stderr,
        )
    if report.copies:
        print(f"LEFT: {len(report.copies)} copies of the number were found after the erasure:")
        for copy in report.copies:
            print(f"  {copy}")
        return 1
    print("check: no copy of the number is left in Redis (ml:*) or Postgres")
    return 0


async def _verify(args: argparse.Namespace, pg: asyncpg.Pool) -> int:
    def progress(events: int, done: int, chains: int) -> None:
        print(
            f"\rverified {events:,} events, {done:,} of {chains:,} chains",
            end="",
            file=sys.stderr,
            flush=True,
        )

    result = await verify(pg, service_sid=args.service, on_progress=progress)
    print(file=sys.stderr)
    if result.ok:
        print(f"ok: {result.events} events in {result.chains} chains verified")
        return 0
    print(f"BROKEN: {len(result.breaks)} of {result.chains} chains ({result.events} events read)")
    for brk in result.breaks:
        print(f"  {brk}")
    return 1


async def _export(args: argparse.Namespace, redis: aioredis.Redis, pg: asyncpg.Pool) -> int:
    filters: dict[str, Any] = {
        "service_sids": set(args.service) if args.service else None,
        "session_sid": args.session,
        "number": args.number,
        "proxy_number": args.proxy_number,
        "since": args.since,
        "until": args.until,
        "types": args.types,
    }
    # Blocking file I/O is fine here: the CLI process does nothing else meanwhile.
    out = sys.stdout.buffer if args.output == "-" else open(args.output, "wb")  # noqa: ASYNC230
    written = lines = 0
    flagged: list[AuditEvent] = []
    try:
        async for chunk in export_events(pg, fmt=args.format, on_flag=flagged.append, **filters):
            out.write(chunk)
            written += len(chunk)
            lines += chunk.count(b"\n")
            print(f"\rexported {lines:,} lines, {written / 1e6:,.1f} MB", end="", file=sys.stderr, flush=True)
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    print(file=sys.stderr)
    # Compliance reads are themselves on record (who exported what, when); numbers listed so that
    # the writer tokenises them like any other number.
    numbers = [n for n in (args.number, args.proxy_number) if n]
    await emit_event(
        redis,
        service_sid=None,
        type="audit.exported",
        data={
            "actor": getpass.getuser(),
            "via": "cli",
            "format": args.format,
            "filters": {
                k: (sorted(v) if isinstance(v, set) else v) for k, v in filters.items() if v is not None
            }
            | {
                "since": args.since and args.since.isoformat(),
                "until": args.until and args.until.isoformat(),
            },
            "numbers": numbers,
        },
    )
    if flagged:
        print(f"{len(flagged)} row(s) could not be trusted and are flagged in the export:", file=sys.stderr)
        for e in flagged[:20]:
            print(f"  {e.id} ({e.ts.isoformat()}): {e.flag}", file=sys.stderr)
        return 1
    return 0
