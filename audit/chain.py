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
from typing import Any, Final, NamedTuple

import asyncpg
import orjson

from audit import cipher
from audit.subjects import EventKeys, SubjectCache, body_policies, event_numbers, resolve_subjects

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
# The batch's (ts_ms, id) pairs as one JSON text: encoding two arrays of thousands of datetimes and
# strings cost the writer more CPU than the lookup itself.
SELECT_STORED_IDS: Final = """
SELECT e.id FROM audit_events e
JOIN (SELECT (b ->> 0)::bigint AS ms, b ->> 1 AS id FROM json_array_elements($1::json) AS b) AS b
  ON e.ts = timestamptz 'epoch' + b.ms * interval '1 millisecond' AND e.id = b.id
"""
UPDATE_HEADS: Final = """
UPDATE audit_chain_heads h SET seq = u.seq, hash = u.hash
FROM unnest($1::text[], $2::date[], $3::bigint[], $4::bytea[]) AS u (chain, period, seq, hash)
WHERE h.chain = u.chain AND h.period = u.period
"""


class Event(NamedTuple):
    """An event as emitted (core/events.py), before personal data is protected. A named tuple:
    the writer builds one per stream entry, and a tuple is the cheapest immutable record."""

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
    return _row_hash(
        prev_hash,
        row.id,
        row.service_sid,
        row.seq,
        row.ts_ms,
        row.type,
        row.session_sid,
        row.numbers,
        row.data,
    )


def _row_hash(
    prev_hash: bytes,
    event_id: str,
    service_sid: str | None,
    seq: int,
    ts_ms: int,
    type_: str,
    session_sid: str | None,
    numbers: list[str],
    data: str,
) -> bytes:
    payload = _dumps(
        [prev_hash.hex(), event_id, service_sid or "", seq, ts_ms, type_, session_sid or "", numbers, data]
    )
    return _sha256(prev_hash + payload).digest()


_dumps = orjson.dumps
_sha256 = hashlib.sha256
_SORT_KEYS: Final = orjson.OPT_SORT_KEYS


def _session_sid(event: Event) -> str | None:
    return _session_of(event.type, event.data)


def _session_of(type_: str, data: dict[str, Any]) -> str | None:
    sid = data.get("session_sid")
    if not isinstance(sid, str) and type_.startswith("session."):
        sid = data.get("sid")
    return sid if isinstance(sid, str) and sid else None


class _Pending(NamedTuple):
    """An event being appended, with what the append needs computed once."""

    event: Event
    ts: datetime
    chain: tuple[str, date]
    numbers: set[str]


class _Protected(NamedTuple):
    """A pending event with its personal data protected: everything of its row but the chain."""

    pending: _Pending
    session_sid: str | None
    numbers: list[str]  # subject tokens, sorted
    data: str  # canonical JSON


async def append_events(
    conn: asyncpg.Connection,
    events: Sequence[Event],
    *,
    known_periods: set[date] | None = None,
    subject_cache: SubjectCache | None = None,
    redelivered: bool = True,
) -> int:
    """Store the events not stored yet, in the given order, extending their chains; returns how
    many were new. Runs in a transaction (a savepoint when the caller already has one).

    `subject_cache`: the writer's SubjectCache (subjects and event keys across batches; cached
    subjects are re-checked and locked in every transaction, see audit/subjects.py).
    `redelivered=False`: the events were never delivered before (the writer's fresh reads), so the
    stored-id check before subjects are resolved is skipped; the one under the chain lock stays."""
    batch: dict[str, _Pending] = {}
    times: dict[int, tuple[datetime, date]] = {}  # events of a batch share their milliseconds
    numbers_of = event_numbers
    for ev in events:
        if ev.id not in batch:
            ts_ms = ev.ts_ms
            tp = times.get(ts_ms)
            if tp is None:
                ts = ts_from_ms(ts_ms)
                tp = times[ts_ms] = (ts, date(ts.year, ts.month, 1))
            batch[ev.id] = _Pending(ev, tp[0], (ev.service_sid or "", tp[1]), numbers_of(ev.data))
    if not batch:
        return 0
    periods = {p.chain[1] for p in batch.values()}
    missing = periods if known_periods is None else periods - known_periods
    if missing:
        await _ensure_partitions(conn, missing)
        if known_periods is not None:
            known_periods |= missing  # only once committed: a rolled-back CREATE must be retried
    async with conn.transaction():
        return await _append(conn, list(batch.values()), subject_cache, redelivered)


async def _ensure_partitions(conn: asyncpg.Connection, periods: set[date]) -> None:
    """Create the months' partitions, in a transaction of their own (a savepoint inside the
    caller's), so a batch transaction does not hold the partition lock. Two transactions creating
    the same month at once: audit_ensure_partition can miss the other's table (the advisory lock
    does not refresh the catalog cache) and fail with DuplicateTableError; the retry sees it."""
    starts = [datetime(p.year, p.month, p.day, tzinfo=UTC) for p in sorted(periods)]
    for attempt in range(3):
        try:
            async with conn.transaction():
                await conn.execute(ENSURE_PARTITIONS, starts)
            return
        except asyncpg.DuplicateTableError:
            if attempt == 2:
                raise


async def _stored_ids(conn: asyncpg.Connection, batch: Sequence[_Pending]) -> set[str]:
    pairs = _dumps([(p.event.ts_ms, p.event.id) for p in batch]).decode()
    return {r[0] for r in await conn.fetch(SELECT_STORED_IDS, pairs)}


async def _append(
    conn: asyncpg.Connection, batch: list[_Pending], cache: SubjectCache | None, redelivered: bool
) -> int:
    # 1. Events stored already (a re-delivery, a reclaimed batch) are dropped first, so they
    #    create no subjects. Not under the chain lock: step 4 checks again under it.
    fresh = batch
    if redelivered:
        already = await _stored_ids(conn, batch)
        if already:
            fresh = [p for p in batch if p.event.id not in already]
            if not fresh:
                return 0
    # 2-3. Subjects (locked FOR SHARE until commit), then the CPU-heavy part (tokens, encryption,
    #    canonical JSON) *before* the chain heads are locked, so the chain lock is held only for
    #    the hashing and the COPY, and another writer's batch can be protected meanwhile.
    protected = await _protect(conn, fresh, cache)
    # 4. Lock the chain heads (fixed order), then, in a new statement (a new snapshot), look for
    #    ids another writer stored since step 1 and committed before we got the lock.
    heads = await _lock_heads(conn, {p.chain for p in fresh})
    late = await _stored_ids(conn, fresh)
    if late:
        protected = [r for r in protected if r.pending.event.id not in late]
        if not protected:
            return 0
    # 5. Chain and store.
    records: list[tuple[Any, ...]] = []
    append = records.append
    for r in protected:
        p = r.pending
        ev = p.event
        seq, prev = heads[p.chain]
        seq += 1
        digest = _row_hash(
            prev, ev.id, ev.service_sid, seq, ev.ts_ms, ev.type, r.session_sid, r.numbers, r.data
        )
        heads[p.chain] = (seq, digest)
        append((p.ts, ev.id, ev.service_sid, seq, ev.type, r.session_sid, r.numbers, r.data, prev, digest))
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


async def _protect(
    conn: asyncpg.Connection, fresh: list[_Pending], cache: SubjectCache | None
) -> list[_Protected]:
    subjects = await resolve_subjects(conn, set().union(*(p.numbers for p in fresh)), cache)
    policies = await body_policies(conn, {p.event.service_sid for p in fresh if p.event.service_sid})
    event_keys: EventKeys = cache.event_keys if cache is not None else {}
    dumps, sort_keys, protect = _dumps, _SORT_KEYS, cipher.protect
    out = []
    for p in fresh:
        ev = p.event
        data, tokens = protect(
            ev.data, subjects, policies.get(ev.service_sid or "", "keep"), p.numbers, event_keys
        )
        out.append(
            _Protected(p, _session_of(ev.type, ev.data), tokens, dumps(data, option=sort_keys).decode())
        )
    return out


async def _lock_heads(
    conn: asyncpg.Connection, chains: set[tuple[str, date]]
) -> dict[tuple[str, date], tuple[int, bytes]]:
    order = sorted(chains)
    names = [c for c, _ in order]
    periods = [p for _, p in order]
    await conn.execute(INSERT_HEADS, names, periods, [genesis_hash(c, p) for c, p in order])
    rows = await conn.fetch(LOCK_HEADS, names, periods)
    return {(r["chain"], r["period"]): (r["seq"], bytes(r["hash"])) for r in rows}
