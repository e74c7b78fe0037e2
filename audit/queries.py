"""Reading the audit log: filtered, keyset-paged queries and streaming exports (CSV, JSON Lines).

Rows come back as readers should see them: subject tokens turned back into numbers and personal
text decrypted; erased parts read "[erased]". Order is (ts, id) ascending; a cursor is the last
(ts, id) seen, opaque to callers. A query by number looks up the number's subject token and uses
the GIN index on `numbers`."""

from __future__ import annotations

import base64
import csv
import io
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

import asyncpg
import orjson

from audit.chain import StoredRow, row_hash, ts_from_ms, ts_to_ms
from audit.cipher import reveal
from audit.subjects import ERASED, lookup_subjects, tokens_in
from core.errors import InvalidParameter
from core.records import INTERACTION_FIELDS, STATUS_RANK

__all__ = ["AuditEvent", "query_events", "export_events", "interactions_from_audit", "EXPORT_FORMATS"]

EXPORT_FORMATS: Final = ("csv", "jsonl")
CSV_COLUMNS: Final = ("id", "ts", "service_sid", "seq", "type", "session_sid", "numbers", "data", "flag")
MAX_LIMIT: Final = 1000
EXPORT_CHUNK_ROWS: Final = 1000

SELECT_EVENTS: Final = """
SELECT ts, id, service_sid, seq, type, session_sid, numbers, data, prev_hash, hash FROM audit_events
"""
SELECT_TOKEN: Final = "SELECT subject_id FROM audit_subjects WHERE number = $1"

# Filter fragments; each takes the next $n in turn (see _Filters.add).
WHERE_SERVICES: Final = "service_sid = ANY(${}::text[])"
WHERE_SESSION: Final = "session_sid = ${}"
WHERE_NUMBERS: Final = "numbers @> ${}::text[]"
WHERE_SINCE: Final = "ts >= ${}"
WHERE_UNTIL: Final = "ts < ${}"
WHERE_TYPES: Final = "type = ANY(${}::text[])"
WHERE_AFTER: Final = "(ts, id) > (${}, ${})"
ORDER: Final = " ORDER BY ts, id"


@dataclass(frozen=True)
class AuditEvent:
    id: str
    ts: datetime
    service_sid: str | None
    seq: int
    type: str
    session_sid: str | None
    numbers: list[str]  # real numbers, "[erased]" for an erased one
    data: dict[str, Any]
    # Why this row cannot be trusted ("altered: its hash does not match", "unreadable: ..."), or
    # None: queries and exports carry on past such a row and flag it instead of failing.
    flag: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "service_sid": self.service_sid,
            "seq": self.seq,
            "type": self.type,
            "session_sid": self.session_sid,
            "numbers": self.numbers,
            "data": self.data,
            "flag": self.flag,
        }


class _Filters:
    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[Any] = []

    def add(self, fragment: str, *values: Any) -> None:
        first = len(self.args) + 1
        self.clauses.append(fragment.format(*range(first, first + len(values))))
        self.args.extend(values)

    def sql(self, tail: str = "") -> str:
        where = (" WHERE " + " AND ".join(self.clauses)) if self.clauses else ""
        return SELECT_EVENTS + where + ORDER + tail


async def _filters(
    conn: asyncpg.Connection,
    *,
    service_sids: set[str] | None,
    session_sid: str | None,
    number: str | None,
    proxy_number: str | None,
    since: datetime | None,
    until: datetime | None,
    types: Iterable[str] | None,
) -> _Filters | None:
    """The WHERE clause, or None when the query cannot match anything (unknown or erased number)."""
    f = _Filters()
    if service_sids is not None:
        f.add(WHERE_SERVICES, sorted(service_sids))
    if session_sid:
        f.add(WHERE_SESSION, session_sid)
    tokens = []
    for n in (number, proxy_number):
        if n:
            token = await conn.fetchval(SELECT_TOKEN, n)
            if token is None:
                return None
            tokens.append(token)
    if tokens:
        f.add(WHERE_NUMBERS, tokens)
    if since is not None:
        f.add(WHERE_SINCE, since)
    if until is not None:
        f.add(WHERE_UNTIL, until)
    if types:
        f.add(WHERE_TYPES, sorted(set(types)))
    return f


def encode_cursor(ts: datetime, event_id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([ts_to_ms(ts), ts.microsecond % 1000, event_id])).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        ms, extra_us, event_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        return ts_from_ms(int(ms)) + timedelta(microseconds=int(extra_us)), str(event_id)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidParameter("cursor is not one this API returned") from exc


async def _reveal(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[AuditEvent]:
    datas = [_data(r) for r in rows]
    wanted: set[str] = set()
    for r, d in zip(rows, datas, strict=True):
        wanted.update(r["numbers"])
        wanted |= tokens_in(d)
    subjects = await lookup_subjects(conn, wanted)
    out = []
    for r, d in zip(rows, datas, strict=True):
        numbers = list(r["numbers"])
        flag = _flag(r, d)
        try:
            data = reveal(d, numbers, subjects) if flag is None else d
        except Exception as err:  # a row that cannot be read is flagged, never the end of the export
            data, flag = d, f"unreadable: {type(err).__name__}"
        out.append(
            AuditEvent(
                id=r["id"],
                ts=r["ts"],
                service_sid=r["service_sid"],
                seq=r["seq"],
                type=r["type"],
                session_sid=r["session_sid"],
                numbers=[subjects[t][0] if t in subjects else ERASED for t in numbers],
                data=data,
                flag=flag,
            )
        )
    return out


def _data(r: asyncpg.Record) -> dict[str, Any]:
    try:
        data = orjson.loads(r["data"])
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def _flag(r: asyncpg.Record, data: dict[str, Any]) -> str | None:
    """A row whose own hash does not match its fields was altered after it was written (the
    chain's links are verify's job; this needs only the row)."""
    row = StoredRow(
        id=r["id"],
        service_sid=r["service_sid"],
        seq=r["seq"],
        ts_ms=ts_to_ms(r["ts"]),
        type=r["type"],
        session_sid=r["session_sid"],
        numbers=list(r["numbers"]),
        data=r["data"],
    )
    try:
        intact = row_hash(bytes(r["prev_hash"]), row) == bytes(r["hash"])
    except Exception:
        intact = False
    if not intact:
        return "altered: the row's hash does not match its contents"
    if not data and r["data"] not in ("{}",):
        return "unreadable: its data is not a JSON object"
    return None


async def query_events(
    pg: asyncpg.Pool,
    *,
    service_sids: set[str] | None,
    session_sid: str | None = None,
    number: str | None = None,
    proxy_number: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> tuple[list[AuditEvent], str | None]:
    """One page of events in (ts, id) order and the cursor of the next page (None: last page).

    `service_sids` None means every Service (and events of no Service); a set restricts to those."""
    limit = max(1, min(limit, MAX_LIMIT))
    async with pg.acquire() as conn:
        f = await _filters(
            conn,
            service_sids=service_sids,
            session_sid=session_sid,
            number=number,
            proxy_number=proxy_number,
            since=since,
            until=until,
            types=types,
        )
        if f is None:
            return [], None
        if cursor:
            f.add(WHERE_AFTER, *decode_cursor(cursor))
        f.args.append(limit + 1)
        rows = await conn.fetch(f.sql(f" LIMIT ${len(f.args)}"), *f.args)
        page = await _reveal(conn, rows[:limit])
    next_cursor = encode_cursor(page[-1].ts, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


async def export_events(
    pg: asyncpg.Pool,
    *,
    service_sids: set[str] | None,
    session_sid: str | None = None,
    number: str | None = None,
    proxy_number: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    types: Iterable[str] | None = None,
    fmt: Literal["csv", "jsonl"] = "csv",
    on_flag: Callable[[AuditEvent], None] | None = None,
) -> AsyncGenerator[bytes, None]:
    """The whole result as CSV or JSON Lines, in chunks, through a server-side cursor: memory stays
    flat whatever the size of the result. A row that was altered or cannot be read is exported
    with its `flag` set, and handed to `on_flag`, and the export carries on."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidParameter(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    async with pg.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        f = await _filters(
            conn,
            service_sids=service_sids,
            session_sid=session_sid,
            number=number,
            proxy_number=proxy_number,
            since=since,
            until=until,
            types=types,
        )
        if fmt == "csv":
            yield _csv_chunk([], header=True)
        if f is None:
            return
        chunk: list[asyncpg.Record] = []
        async for r in conn.cursor(f.sql(), *f.args, prefetch=EXPORT_CHUNK_ROWS):
            chunk.append(r)
            if len(chunk) >= EXPORT_CHUNK_ROWS:
                yield _encode(_report(await _reveal(conn, chunk), on_flag), fmt)
                chunk = []
        if chunk:
            yield _encode(_report(await _reveal(conn, chunk), on_flag), fmt)


def _report(events: list[AuditEvent], on_flag: Callable[[AuditEvent], None] | None) -> list[AuditEvent]:
    if on_flag is not None:
        for e in events:
            if e.flag:
                on_flag(e)
    return events


def _encode(events: list[AuditEvent], fmt: str) -> bytes:
    if fmt == "jsonl":
        return b"".join(orjson.dumps(e.as_dict()) + b"\n" for e in events)
    return _csv_chunk(events)


def _csv_chunk(events: list[AuditEvent], *, header: bool = False) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(CSV_COLUMNS)
    for e in events:
        d = e.as_dict()
        w.writerow(
            [
                d["id"],
                d["ts"],
                d["service_sid"] or "",
                d["seq"],
                d["type"],
                d["session_sid"] or "",
                " ".join(e.numbers),
                orjson.dumps(e.data).decode(),
                e.flag or "",
            ]
        )
    return buf.getvalue().encode()


# Every interaction event of one session, in the order they were written (seq follows the stream).
SELECT_INTERACTION_EVENTS: Final = """
SELECT ts, id, service_sid, seq, type, session_sid, numbers, data, prev_hash, hash FROM audit_events
WHERE service_sid = $1 AND session_sid = $2 AND type = ANY($3::text[])
ORDER BY ts, seq
"""
INTERACTION_EVENT_TYPES: Final = ("interaction.created", "interaction.updated", "interaction.deleted")
_STATUS_FIELDS: Final = ("inbound_resource_status", "outbound_resource_status")
# The Interaction resource's own fields: the record's (core/records.py) less its bookkeeping.
RESOURCE_FIELDS: Final = tuple(
    f for f in INTERACTION_FIELDS if f not in ("outcome", "origin", "created_ms", "updated_ms")
)


def _iso_ms(ms: Any) -> str | None:
    try:
        value = int(ms)
    except (TypeError, ValueError):
        return None
    if value <= 0:
        return None
    return ts_from_ms(value).strftime("%Y-%m-%dT%H:%M:%SZ")


async def interactions_from_audit(
    pg: asyncpg.Pool,
    *,
    service_sid: str,
    session_sid: str,
    interaction_sid: str | None = None,
    limit: int,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """A session's Interactions rebuilt from the log, for those Redis no longer holds (past their
    hot window, or the session's retention).

    Folds each interaction's `interaction.created` and `interaction.updated` events (the one with
    the latest `updated_ms` wins, ties go to the later write); `interaction.deleted` removes it.
    Newest first like the live list; each dict holds the Interaction's fields (sid, session_sid,
    service_sid, data, type, inbound_/outbound_ participant and resource sid/status/type,
    date_created, date_updated, origin) and `created_ms` / `updated_ms` as the Redis hash has them.
    Numbers and text of erased subjects read "[erased]"."""
    async with pg.acquire() as conn:
        rows = await conn.fetch(
            SELECT_INTERACTION_EVENTS, service_sid, session_sid, list(INTERACTION_EVENT_TYPES)
        )
        events = await _reveal(conn, rows)
    latest: dict[str, tuple[tuple[int, int], dict[str, Any]]] = {}
    deleted: set[str] = set()
    for order, ev in enumerate(events):
        sid = ev.data.get("sid")
        if not isinstance(sid, str) or (interaction_sid is not None and sid != interaction_sid):
            continue
        if ev.type == "interaction.deleted":
            deleted.add(sid)
            continue
        try:
            updated_ms = int(ev.data.get("updated_ms") or 0)
        except (TypeError, ValueError):
            updated_ms = 0
        rank = (updated_ms, order)
        merged = dict(latest[sid][1]) if sid in latest else {}
        if sid in latest and rank < latest[sid][0]:
            # A late-written older state fills gaps only; it never overwrites a newer status.
            merged = {**ev.data, **merged}
            rank = latest[sid][0]
        else:
            merged.update(ev.data)
        if sid in latest:  # a status never moves back (Twilio's callbacks come out of order)
            for field in _STATUS_FIELDS:
                before, after = latest[sid][1].get(field), merged.get(field)
                if before and STATUS_RANK.get(after or "", 1) < STATUS_RANK.get(before, 0):
                    merged[field] = before
        latest[sid] = (rank, merged)

    out = []
    for sid, (_, ix) in latest.items():
        if sid in deleted:
            continue
        view: dict[str, Any] = {name: ix.get(name) or None for name in RESOURCE_FIELDS}
        view["sid"] = sid
        view["session_sid"] = session_sid
        view["service_sid"] = service_sid
        view["type"] = ix.get("type") or "unknown"
        view["origin"] = ix.get("origin") or ""
        view["created_ms"] = ix.get("created_ms")
        view["updated_ms"] = ix.get("updated_ms") or ix.get("created_ms")
        view["date_created"] = _iso_ms(view["created_ms"])
        view["date_updated"] = _iso_ms(view["updated_ms"])
        out.append(view)
    out.sort(key=lambda v: (int(v["created_ms"] or 0), v["sid"]), reverse=True)
    return out[offset : offset + max(0, limit)]
