"""`maskline block add|remove|list --service NAME_OR_SID [IDENTIFIER ...]`: a Service's block list
from a terminal (the same store as /v1/Services/{KS}/Blocked: sessions/blocklist.py). Each change
is audited like the API's."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from core.connections import redis_client
from core.errors import MasklineError
from core.paging import PageRequest
from core.settings import Settings
from maskline.numbers_cli import table
from sessions.blocklist import BlockList
from sessions.services import ServiceStore

__all__ = ["add_block_commands", "run_block"]


def add_block_commands(sub: Any) -> None:
    text = "a Service's block list: blocked identifiers can neither join a session nor reach anyone"
    block = sub.add_parser("block", help=text, description=text)
    actions = block.add_subparsers(dest="block_command", required=True, metavar="ACTION")
    for name, what in (("add", "block identifiers"), ("remove", "unblock identifiers (or BL sids)")):
        action = actions.add_parser(name, help=what, description=what)
        action.add_argument("--service", required=True, help="the Service (its SID or UniqueName)")
        action.add_argument("identifiers", nargs="+", metavar="IDENTIFIER", help="E.164, e.g. +14155550100")
    listing = actions.add_parser(
        "list", help="list blocked identifiers", description="list blocked identifiers"
    )
    listing.add_argument("--service", required=True, help="the Service (its SID or UniqueName)")


async def run_block(args: argparse.Namespace, settings: Settings) -> int:
    pg = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    redis = redis_client(settings.redis_url, max_connections=2)
    try:
        services = ServiceStore(pg, redis, account_sid=settings.twilio_account_sid)
        blocks = BlockList(redis, pg)
        try:
            ks = await services.resolve(args.service)
            if args.block_command == "list":
                rows, request = [], PageRequest(size=1000)
                while True:
                    page = await blocks.list(ks, request)
                    rows += [(r["identifier"], r["sid"], r["date_created"].isoformat()) for r in page.items]
                    if page.next is None:
                        break
                    request = PageRequest(size=1000, cursor=page.next)
                print(table(["identifier", "sid", "blocked since"], rows) if rows else "nothing blocked")
                return 0
            for identifier in args.identifiers:
                if args.block_command == "add":
                    row = await blocks.add(ks, identifier)
                    print(f"blocked {row['identifier']} ({row['sid']})")
                else:
                    await blocks.remove(ks, identifier)
                    print(f"unblocked {identifier}")
        except MasklineError as err:
            print(f"maskline block: {err.message} (code {err.code})")
            return 1
        return 0
    finally:
        await redis.aclose()
        await pg.close()
