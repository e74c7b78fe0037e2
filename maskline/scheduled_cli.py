"""`maskline scheduled list|cancel`: scheduled messages for operators (docs/scheduled.md).

    maskline scheduled list --service NAME_OR_SID [--session SID_OR_NAME] [--status scheduled]
    maskline scheduled cancel --service NAME_OR_SID --session SID_OR_NAME KM...

Phone numbers are never shown (participant SIDs are); bodies are left out too."""

from __future__ import annotations

import argparse
from typing import Any

import asyncpg

from core import keys
from core.connections import redis_client
from core.errors import MasklineError
from core.settings import Settings
from maskline.numbers_cli import table
from sessions.scheduled import STATUSES, ScheduledMessages
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = ["add_scheduled_commands", "run_scheduled"]


def add_scheduled_commands(sub: Any) -> None:
    text = "scheduled messages: list them (by Service or session) and cancel them"
    scheduled = sub.add_parser("scheduled", help=text, description=text)
    actions = scheduled.add_subparsers(dest="scheduled_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="list scheduled messages", description="list scheduled messages"
    )
    listing.add_argument("--service", required=True, help="the Service (its SID or UniqueName)")
    listing.add_argument("--session", help="only this session (its SID or UniqueName)")
    listing.add_argument("--status", choices=STATUSES, help="only messages in this status")
    cancel = actions.add_parser(
        "cancel", help="cancel scheduled messages", description="cancel scheduled messages"
    )
    cancel.add_argument("--service", required=True, help="the Service (its SID or UniqueName)")
    cancel.add_argument("--session", required=True, help="the session (its SID or UniqueName)")
    cancel.add_argument("messages", nargs="+", metavar="KM", help="scheduled message SIDs")


async def run_scheduled(args: argparse.Namespace, settings: Settings) -> int:
    pg = await asyncpg.create_pool(settings.database_url, min_size=1, max_size=2)
    redis = redis_client(settings.redis_url, max_connections=4)
    try:
        store = ScheduledMessages(redis)
        try:
            ks = await ServiceStore(pg, redis, account_sid=settings.twilio_account_sid).resolve(args.service)
            sessions = SessionStore(redis)
            if args.scheduled_command == "cancel":
                kc = await sessions.resolve(ks, args.session)
                for km in args.messages:
                    await store.cancel(ks, kc, km, reason="operator")
                    print(f"canceled {km}")
                return 0
            if args.session:
                session_sids = [await sessions.resolve(ks, args.session)]
            else:
                session_sids = sorted(
                    {str(s) for s in await redis.zrange(keys.sessions_by_created(ks), 0, -1)}
                )
            rows = []
            for kc in session_sids:
                for m in await store.list(ks, kc):
                    if args.status is None or m.get("status") == args.status:
                        rows.append(
                            (
                                m["sid"],
                                kc,
                                m["participant_sid"],
                                _iso(m["send_at_ms"]),
                                m["status"],
                                m.get("reason") or "",
                            )
                        )
            rows.sort(key=lambda r: r[3])
            headers = ["sid", "session", "participant", "send at (UTC)", "status", "reason"]
            print(table(headers, rows) if rows else "no scheduled message")
            return 0
        except MasklineError as err:
            print(f"maskline scheduled: {err.message} (code {err.code})")
            return 1
    finally:
        await redis.aclose()
        await pg.close()


def _iso(ms: str) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(ms) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
