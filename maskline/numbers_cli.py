"""`maskline numbers import|list`: the Twilio account's numbers into a Service's pool, in one command.

`import` lists the account's IncomingPhoneNumbers (every page), adds the chosen ones to the Service
with their Twilio PN sids and capabilities, and points their webhooks at MASKLINE_PUBLIC_URL
(docs/numbers.md). It is safe to run again: a number already in the Service is not added twice,
one already configured exactly so is not updated, so a second run changes nothing. Progress goes
to stderr (a bar on a terminal), the summary of what changed to stdout; exit 1 if a number failed.
maskline/cli.py calls `add_numbers_commands` to build the argparse group and `run` to execute it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis

from core import keys
from core.connections import redis_client
from core.errors import MasklineError
from core.settings import Settings
from pool.numbers import parse_proxy_number
from pool.registry import NumberRegistry
from relay.twilio_account import IncomingNumber, TwilioAccount, TwilioAccountError, Webhooks

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["add_numbers_commands", "run", "table"]

PAGE_SIZE: Final = 100
FIND_SERVICE: Final = """
SELECT sid, unique_name FROM services WHERE sid = $1 OR unique_name = $1 ORDER BY (sid = $1) DESC LIMIT 1
"""
IN_ANY_SERVICE: Final = """
SELECT n.phone_number, n.sid, n.service_sid, s.unique_name
  FROM phone_numbers n JOIN services s ON s.sid = n.service_sid
 WHERE n.phone_number = ANY($1::text[])
"""
LIST_NUMBERS: Final = """
SELECT n.*, s.unique_name FROM phone_numbers n JOIN services s ON s.sid = n.service_sid
 WHERE $1::text IS NULL OR n.service_sid = $1
 ORDER BY s.unique_name, n.phone_number
"""


def add_numbers_commands(sub: Any) -> None:
    text = "the Twilio account's numbers in a Service's pool: import, list (docs/numbers.md)"
    numbers = sub.add_parser("numbers", help=text, description=text)
    actions = numbers.add_subparsers(dest="numbers_command", required=True, metavar="ACTION")
    text = (
        "add the Twilio account's numbers to a Service (their PN sids and capabilities) and point "
        "their webhooks at MASKLINE_PUBLIC_URL; safe to run again"
    )
    imp = actions.add_parser("import", help=text, description=text)
    imp.add_argument("--service", required=True, help="the Service: its SID (KS...) or its UniqueName")
    which = imp.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every number of the account")
    which.add_argument(
        "--number", action="extend", nargs="+", metavar="E164", help="these numbers (repeatable)"
    )
    which.add_argument("--area-code", metavar="NPA", help="the account's numbers of this NANP area code")
    imp.add_argument(
        "--no-configure", action="store_true", help="leave the numbers' webhooks as they are in Twilio"
    )
    imp.add_argument("--dry-run", action="store_true", help="show what would change, change nothing")
    imp.add_argument(
        "--concurrency", type=int, default=8, help="Twilio updates in flight at once (default 8)"
    )
    text = "list pool numbers: service, number, PN sid, capabilities, reserved, live sessions"
    listing = actions.add_parser("list", help=text, description=text)
    listing.add_argument("--service", help="only this Service (SID or UniqueName)")


async def run(args: argparse.Namespace, settings: Settings) -> int:
    from maskline.migrate import apply_migrations

    await apply_migrations(settings.database_url)
    pg = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=4)
    redis = redis_client(settings.redis_url, max_connections=8)
    try:
        if args.numbers_command == "list":
            return await _list(args, pg, redis)
        return await _import(args, settings, pg, redis)
    finally:
        await redis.aclose()
        await pg.close()


def _fail(message: str, code: int = 2) -> int:
    print(f"maskline: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _progress() -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; silent otherwise (logs, CI, pipes)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not sys.stderr.isatty(),
    ) as bar:
        yield bar


async def _service(pg: asyncpg.Pool, name_or_sid: str) -> asyncpg.Record | None:
    return await pg.fetchrow(FIND_SERVICE, name_or_sid)


# ------------------------------------------------------------------ import


@dataclass
class _Plan:
    number: IncomingNumber
    add: bool
    configure: bool
    added: bool = False
    configured: bool = False
    problem: str = ""  # why it failed


@dataclass
class _Report:
    selected: int = 0
    pages: int = 0
    plans: list[_Plan] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (number / sid, reason)

    def counts(self) -> dict[str, int]:
        failed = [p for p in self.plans if p.problem]
        done = [p for p in self.plans if not p.problem]
        return {
            "added": sum(p.added for p in done),
            "configured": sum(p.configured for p in done),
            "unchanged": sum(not (p.add or p.configure) for p in done),
            "skipped": len(self.skipped),
            "failed": len(failed),
        }


async def _import(
    args: argparse.Namespace, settings: Settings, pg: asyncpg.Pool, redis: aioredis.Redis
) -> int:
    if not args.no_configure and not settings.public_url_explicit:
        return _fail(
            "set MASKLINE_PUBLIC_URL to the URL Twilio reaches Maskline at (its webhooks are set to "
            "{MASKLINE_PUBLIC_URL}/twilio/sms and /twilio/voice), or pass --no-configure"
        )
    if args.area_code is not None and not re.fullmatch(r"[2-9][0-9]{2}", args.area_code):
        return _fail(f"--area-code {args.area_code!r} is not a NANP area code (three digits, e.g. 415)")
    try:
        wanted = [parse_proxy_number(n).e164 for n in args.number or ()]
    except MasklineError as err:
        return _fail(f"--number: {err.message}")
    service = await _service(pg, args.service)
    if service is None:
        return _fail(f"no Service with SID or UniqueName {args.service!r}", 1)
    webhooks = Webhooks.for_public_url(settings.public_url)
    registry = NumberRegistry(pg, redis)
    async with aiohttp.ClientSession() as http:
        account = TwilioAccount(
            http,
            api_url=settings.twilio_api_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
        )
        report = _Report()
        with _progress() as bar:
            try:
                numbers = await _select(account, args, wanted, report, bar)
            except TwilioAccountError as err:
                return _fail(f"could not list the Twilio account's numbers: {err.message}", 1)
            await _plan(pg, service, numbers, webhooks, args.no_configure, report)
            if not args.dry_run:
                await _apply(report, service["sid"], account, registry, webhooks, args.concurrency, bar)
    _print_report(report, service, args.dry_run)
    return 1 if report.counts()["failed"] else 0


async def _select(
    account: TwilioAccount, args: argparse.Namespace, wanted: Sequence[str], report: _Report, bar: Progress
) -> list[IncomingNumber]:
    """The account's numbers the arguments choose (every page listed)."""
    task = bar.add_task("listing the Twilio account's numbers", total=None)
    found: dict[str, IncomingNumber] = {}
    # --number: Twilio's PhoneNumber filter, one listing per number; otherwise the whole account.
    queries: list[str | None] = list(wanted) or [None]
    for query in queries:
        async for page in account.pages(page_size=PAGE_SIZE, phone_number=query):
            report.pages += 1
            for number in page:
                if query is None or number.phone_number == query:
                    found.setdefault(number.sid, number)
            bar.update(task, advance=len(page))
    bar.update(task, total=len(found), completed=len(found))
    by_e164 = {n.phone_number: n for n in found.values()}
    for missing in [n for n in wanted if n not in by_e164]:
        report.skipped.append((missing, "not a number of the Twilio account"))
    chosen: list[IncomingNumber] = []
    for number in found.values():
        try:
            parsed = parse_proxy_number(number.phone_number)
        except MasklineError as err:
            report.skipped.append(
                (f"{number.phone_number} {number.sid}", f"not usable as a proxy number: {err.message}")
            )
            continue
        if args.area_code is None or parsed.area == args.area_code:
            chosen.append(number)
    report.selected = len(chosen)
    return chosen


async def _plan(
    pg: asyncpg.Pool,
    service: asyncpg.Record,
    numbers: list[IncomingNumber],
    webhooks: Webhooks,
    no_configure: bool,
    report: _Report,
) -> None:
    owners = {r["phone_number"]: r for r in await pg.fetch(IN_ANY_SERVICE, [n.phone_number for n in numbers])}
    for number in numbers:
        owner = owners.get(number.phone_number)
        if owner is not None and owner["service_sid"] != service["sid"]:
            reason = f"already in Service {owner['unique_name']} ({owner['service_sid']})"
            report.skipped.append((f"{number.phone_number} {number.sid}", reason))
            continue
        configure = not no_configure and not webhooks.configured(number)
        report.plans.append(_Plan(number, add=owner is None, configure=configure))


async def _apply(
    report: _Report,
    service_sid: str,
    account: TwilioAccount,
    registry: NumberRegistry,
    webhooks: Webhooks,
    concurrency: int,
    bar: Progress,
) -> None:
    """Per number: point its webhooks at Maskline, then add it to the pool (a number whose
    webhooks could not be set is not added: the next run does both)."""
    todo = [p for p in report.plans if p.add or p.configure]
    task = bar.add_task("importing", total=len(todo))
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(plan: _Plan) -> None:
        number = plan.number
        async with gate:
            try:
                if plan.configure:
                    await account.configure(number.sid, webhooks, number)
                    plan.configured = True
                if plan.add:
                    await registry.add(
                        service_sid,
                        number.phone_number,
                        sid=number.sid,
                        capabilities=number.proxy_capabilities,
                        friendly_name=number.friendly_name or None,
                    )
                    plan.added = True
            except MasklineError as err:
                step = "not added" if plan.configured or not plan.configure else "webhooks not set"
                plan.problem = f"{step}: {err.message}"
            finally:
                bar.update(task, advance=1)

    await asyncio.gather(*(one(p) for p in todo))


def _print_report(report: _Report, service: asyncpg.Record, dry_run: bool) -> None:
    counts = report.counts()
    print(
        f"Service {service['unique_name']} ({service['sid']}): {report.selected} number(s) of the "
        f"Twilio account selected ({report.pages} page(s) listed)"
    )
    if dry_run:
        would_add = sum(p.add for p in report.plans)
        would_configure = sum(p.configure for p in report.plans)
        print(
            f"dry run, nothing changed: would add {would_add}, would configure {would_configure}, "
            f"unchanged {counts['unchanged']}, skipped {counts['skipped']}"
        )
    else:
        print(", ".join(f"{name} {count}" for name, count in counts.items()))
    for what, reason in report.skipped:
        print(f"  skipped {what}: {reason}")
    for plan in report.plans:
        if plan.problem:
            print(f"  failed  {plan.number.phone_number} {plan.number.sid}: {plan.problem}")


# ------------------------------------------------------------------ list


def capability_names(capabilities: Any) -> str:
    """`voice,sms,mms` from a Proxy capabilities object (either shape)."""
    caps = orjson.loads(capabilities) if isinstance(capabilities, str) else dict(capabilities or {})
    names = [
        c
        for c in ("voice", "sms", "mms", "fax")
        if caps.get(c) or caps.get(f"{c}_inbound") or caps.get(f"{c}_outbound")
    ]
    return ",".join(names) or "-"


async def _list(args: argparse.Namespace, pg: asyncpg.Pool, redis: aioredis.Redis) -> int:
    service_sid = None
    if args.service:
        service = await _service(pg, args.service)
        if service is None:
            return _fail(f"no Service with SID or UniqueName {args.service!r}", 1)
        service_sid = service["sid"]
    rows = await pg.fetch(LIST_NUMBERS, service_sid)
    in_use: list[str] = ["?"] * len(rows)
    if rows:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for row in rows:
                    pipe.hget(keys.number(row["service_sid"], row["phone_number"]), "in_use")
                in_use = [str(int(v or 0)) for v in await pipe.execute()]
        except (OSError, aioredis.RedisError) as err:  # the table still shows what Postgres holds
            print(f"maskline: live session counts unavailable (Redis: {err})", file=sys.stderr)
    print(
        table(
            ("SERVICE", "NUMBER", "SID", "CAPABILITIES", "RESERVED", "IN USE"),
            [
                (
                    row["unique_name"],
                    row["phone_number"],
                    row["sid"],
                    capability_names(row["capabilities"]),
                    "yes" if row["is_reserved"] else "no",
                    count,
                )
                for row, count in zip(rows, in_use, strict=True)
            ],
        )
    )
    print(f"{len(rows)} number(s)")
    return 0


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart (no trailing blanks)."""
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
