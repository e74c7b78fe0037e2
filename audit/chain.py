"""Appending events to the hash-chained log. The writer, erasure and retention all append here.

A chain is (service_sid or "", month of the event time): it lives in one partition. Row n of a
chain stores `prev_hash` = hash of row n-1 (a chain-specific genesis for n = 1) and
`hash = sha256(prev_hash || canonical(row))`; see `row_hash`. Appending locks the chain heads
(audit_chain_heads, FOR UPDATE, in a fixed order), so writers extend a chain one at a time; under
that lock ids already stored are skipped, which makes a retried or reclaimed batch harmless."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import asyncpg
import orjson

from audit import privacy

__all__ = [
    "Event",
    "StoredRow",
    "append_events",
    "canonical_data",
    "chain_of",
    "genesis_hash",
    "period_of",
    "row_hash",
    "ts_from_ms",
    "ts_to_ms",
]

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
COLUMNS: Final = (
    "ts",
    "id",
    "service_sid",
    "seq",
    "type",
    "session_sid",
    "numbers",
    "data",
    "prev_hash",
    "hash",
)

ENSURE_PARTITIONS: Final = "SELECT audit_ensure_partition(t) FROM unnest($1::timestamptz[]) AS t"
INSERT_HEADS: Final = """
INSERT INTO audit_chain_heads (chain, period, seq, hash)
SELECT c, p, 0, h FROM unnest($1::text[], $2::date[], $3::bytea[]) AS t (c, p, h)
ORDER BY c, p
ON CONFLICT (chain, period) DO NOTHING
"""
LOCK_HEADS: Final = """
SELECT chain, period, seq, hash FROM audit_chain_heads
WHERE (chain, period) IN (SELECT c, p FROM unnest($1::text[], $2::date[]) AS t (c, p))
ORDER BY chain, period
FOR UPDATE
"""
SELECT_STORED_IDS: Final = """
SELECT e.id FROM audit_events e
JOIN unnest($1::timestamptz[], $2::text[]) AS b (ts, id) ON e.ts = b.ts AND e.id = b.id
"""
UPDATE_HEADS: Final = """
UPDATE audit_chain_heads h SET seq = u.seq, hash = u.hash
FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bytea[]) AS u (chain, period, seq, hash)
WHERE h.chain = u.chain AND h.period = u.period
"""


@dataclass(frozen=True)
class Event:
    """An event as emitted (audit/events.py), before personal data is protected."""

    id: str
    type: str
    service_sid: str | None
    ts_ms: int
    data: dict[str, Any]


@dataclass(frozen=True)
class StoredRow:
    """The chained fields of an audit_events row (what `row_hash` covers)."""

    id: str
    service_sid: str | None
    seq: int
    ts_ms: int
    type: str
    session_sid: str | None
    numbers: list[str]
    data: str


def ts_from_ms(ts_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ts_ms)


def ts_to_ms(ts: datetime) -> int:
    return (ts - EPOCH) // timedelta(milliseconds=1)


def period_of(ts_ms: int) -> date:
    """First day (UTC) of the month holding the event: its partition and chain."""
    d = ts_from_ms(ts_ms)
    return date(d.year, d.month, 1)


def chain_of(service_sid: str | None) -> str:
    return service_sid or ""


def genesis_hash(chain: str, period: date) -> bytes:
    """prev_hash of a chain's first row: bound to the chain, so rows cannot move between chains."""
    return hashlib.sha256(f"maskline audit genesis|{chain}|{period.isoformat()}".encode()).digest()


def canonical_data(data: dict[str, Any]) -> str:
    return orjson.dumps(data, option=orjson.OPT_SORT_KEYS).decode()


def row_hash(prev_hash: bytes, row: StoredRow) -> bytes:
    payload = orjson.dumps(
        [
            prev_hash.hex(),
            row.id,
            row.service_sid or "",
            row.seq,
            row.ts_ms,
            row.type,
            row.session_sid or "",
            row.numbers,
            row.data,
        ]
    )
    return hashlib.sha256(prev_hash + payload).digest()


def _session_sid(event: Event) -> str | None:
    sid = event.data.get("session_sid")
    if not isinstance(sid, str) and event.type.startswith("session."):
        sid = event.data.get("sid")
    return sid if isinstance(sid, str) and sid else None


@dataclass
class _Pending:
    """An event being appended, with what the append needs computed once."""

    event: Event
    ts: datetime
    chain: tuple[str, date]
    numbers: set[str]


async def append_events(
    conn: asyncpg.Connection, events: Sequence[Event], *, known_periods: set[date] | None = None
) -> int:
    """Store the events not stored yet, in the given order, extending their chains; returns how
    many were new. Runs in a transaction (a savepoint when the caller already has one)."""
    batch: dict[str, _Pending] = {}
    for ev in events:
        if ev.id not in batch:
            ts = ts_from_ms(ev.ts_ms)
            chain = (chain_of(ev.service_sid), date(ts.year, ts.month, 1))
            batch[ev.id] = _Pending(ev, ts, chain, privacy.event_numbers(ev.data))
    if not batch:
        return 0
    periods = {p.chain[1] for p in batch.values()}
    missing = periods if known_periods is None else periods - known_periods
    async with conn.transaction():
        if missing:
            await conn.execute(
                ENSURE_PARTITIONS, [datetime(p.year, p.month, p.day, tzinfo=UTC) for p in missing]
            )
        count = await _append(conn, list(batch.values()))
    if known_periods is not None:
        known_periods |= missing  # only once committed: a rolled-back CREATE must be retried
    return count


async def _append(conn: asyncpg.Connection, batch: list[_Pending]) -> int:
    heads = await _lock_heads(conn, {p.chain for p in batch})
    stored = await conn.fetch(SELECT_STORED_IDS, [p.ts for p in batch], [p.event.id for p in batch])
    already = {r["id"] for r in stored}
    fresh = [p for p in batch if p.event.id not in already]
    if not fresh:
        return 0

    subjects = await privacy.resolve_subjects(conn, set().union(*(p.numbers for p in fresh)))
    policies = await privacy.body_policies(conn, {p.event.service_sid for p in fresh if p.event.service_sid})
    records = []
    event_keys: privacy.EventKeys = {}
    for p in fresh:
        ev = p.event
        seq, prev = heads[p.chain]
        data, tokens = privacy.protect(
            ev.data, subjects, policies.get(ev.service_sid or "", "keep"), p.numbers, event_keys
        )
        row = StoredRow(
            id=ev.id,
            service_sid=ev.service_sid,
            seq=seq + 1,
            ts_ms=ev.ts_ms,
            type=ev.type,
            session_sid=_session_sid(ev),
            numbers=tokens,
            data=canonical_data(data),
        )
        digest = row_hash(prev, row)
        heads[p.chain] = (row.seq, digest)
        records.append(
            (
                p.ts,
                row.id,
                row.service_sid,
                row.seq,
                row.type,
                row.session_sid,
                row.numbers,
                row.data,
                prev,
                digest,
            )
        )
    await conn.copy_records_to_table("audit_events", records=records, columns=COLUMNS)
    order = sorted({p.chain for p in fresh})
    await conn.execute(
        UPDATE_HEADS,
        [c for c, _ in order],
        [d for _, d in order],
        [heads[k][0] for k in order],
        [heads[k][1] for k in order],
    )
    return len(records)


async def _lock_heads(
    conn: asyncpg.Connection, chains: set[tuple[str, date]]
) -> dict[tuple[str, date], tuple[int, bytes]]:
    order = sorted(chains)
    names = [c for c, _ in order]
    periods = [p for _, p in order]
    await conn.execute(INSERT_HEADS, names, periods, [genesis_hash(c, p) for c, p in order])
    rows = await conn.fetch(LOCK_HEADS, names, periods)
    return {(r["chain"], r["period"]): (r["seq"], bytes(r["hash"])) for r in rows}
