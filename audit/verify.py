"""`maskline audit verify`: recompute every chain and point at the first broken link of each.

Checks per chain (service, month), rows in seq order:
- seq runs 1, 2, 3 ... without a repeat (repeat: *inserted*) or a gap (gap: *missing*);
- each row's prev_hash is the hash of the row before; when it is the hash of another row of the
  chain the rows were *reordered*, otherwise the row was *inserted* (or its link *altered*);
- each row's hash is sha256(prev_hash || canonical row) (mismatch: *altered*);
- the last row is the chain head (audit_chain_heads): a removed tail is *missing*, a row past the
  head or a chain without a head is *inserted*.
Erasure deletes subject keys only and retention drops whole chains with their heads, so neither
breaks verification. Runs in one REPEATABLE READ snapshot, so a writer appending meanwhile is fine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Final, Literal

import asyncpg

from audit.chain import StoredRow, genesis_hash, row_hash, ts_to_ms

__all__ = ["Break", "VerifyResult", "verify"]

Problem = Literal["altered", "missing", "inserted", "reordered"]

SELECT_HEADS: Final = """
SELECT chain, period, seq, hash FROM audit_chain_heads WHERE $1::text IS NULL OR chain = $1
"""
SELECT_CHAINS: Final = """
SELECT DISTINCT coalesce(service_sid, '') AS chain, date_trunc('month', ts AT TIME ZONE 'UTC')::date AS period
FROM audit_events WHERE $1::text IS NULL OR coalesce(service_sid, '') = $1
"""
SELECT_CHAIN_ROWS: Final = """
SELECT ts, id, service_sid, seq, type, session_sid, numbers, data, prev_hash, hash FROM audit_events
WHERE coalesce(service_sid, '') = $1 AND ts >= $2 AND ts < $3
ORDER BY seq, id
"""
SELECT_ROW_BY_HASH: Final = """
SELECT seq, id FROM audit_events
WHERE coalesce(service_sid, '') = $1 AND ts >= $2 AND ts < $3 AND hash = $4
LIMIT 1
"""


@dataclass(frozen=True)
class Break:
    service_sid: str | None
    period: date
    seq: int
    event_id: str | None
    problem: Problem
    detail: str

    def __str__(self) -> str:
        where = f"{self.service_sid or '(no service)'} {self.period:%Y-%m} seq {self.seq}"
        return f"{where} ({self.event_id or '-'}): {self.problem}: {self.detail}"


@dataclass(frozen=True)
class VerifyResult:
    chains: int
    events: int
    breaks: list[Break] = field(default_factory=list)  # the first break of each broken chain

    @property
    def ok(self) -> bool:
        return not self.breaks

    @property
    def first_break(self) -> Break | None:
        return self.breaks[0] if self.breaks else None


# Told (events read, chains done, chains in all) after each chain: a CLI's progress line.
Progress = Callable[[int, int, int], None]


async def verify(
    pg: asyncpg.Pool | asyncpg.Connection,
    *,
    service_sid: str | None = None,
    on_progress: Progress | None = None,
) -> VerifyResult:
    if isinstance(pg, asyncpg.Pool):
        async with pg.acquire() as conn:
            return await _verify(conn, service_sid, on_progress)
    return await _verify(pg, service_sid, on_progress)


async def _verify(
    conn: asyncpg.Connection, service_sid: str | None, on_progress: Progress | None
) -> VerifyResult:
    events = 0
    breaks: list[Break] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        heads = {
            (r["chain"], r["period"]): (r["seq"], bytes(r["hash"]))
            for r in await conn.fetch(SELECT_HEADS, service_sid)
        }
        chains = set(heads) | {
            (r["chain"], r["period"]) for r in await conn.fetch(SELECT_CHAINS, service_sid)
        }
        for done, (chain, period) in enumerate(sorted(chains), 1):
            count, found = await _verify_chain(conn, chain, period, heads.get((chain, period)))
            events += count
            if found:
                breaks.append(found)
            if on_progress is not None:
                on_progress(events, done, len(chains))
    return VerifyResult(chains=len(chains), events=events, breaks=breaks)


async def _verify_chain(
    conn: asyncpg.Connection, chain: str, period: date, head: tuple[int, bytes] | None
) -> tuple[int, Break | None]:
    lo = datetime(period.year, period.month, 1, tzinfo=UTC)
    hi = datetime(period.year + period.month // 12, period.month % 12 + 1, 1, tzinfo=UTC)
    sid = chain or None

    def brk(seq: int, event_id: str | None, problem: Problem, detail: str) -> Break:
        return Break(sid, period, seq, event_id, problem, detail)

    last_seq, prev = 0, genesis_hash(chain, period)
    count = 0
    async for r in conn.cursor(SELECT_CHAIN_ROWS, chain, lo, hi, prefetch=2000):
        count += 1
        seq, event_id = r["seq"], r["id"]
        stored_prev, stored_hash = bytes(r["prev_hash"]), bytes(r["hash"])
        row = StoredRow(
            id=event_id,
            service_sid=r["service_sid"],
            seq=seq,
            ts_ms=ts_to_ms(r["ts"]),
            type=r["type"],
            session_sid=r["session_sid"],
            numbers=list(r["numbers"]),
            data=r["data"],
        )
        self_ok = row_hash(stored_prev, row) == stored_hash
        if head is not None and seq > head[0]:
            return count, brk(seq, event_id, "inserted", f"row after the chain head (head seq {head[0]})")
        if seq <= last_seq:
            return count, brk(seq, event_id, "inserted", f"second row with seq {seq}")
        if seq > last_seq + 1:
            return count, brk(
                last_seq + 1, None, "missing", f"seq {last_seq + 1}..{seq - 1} absent (next is {event_id})"
            )
        if stored_prev != prev:
            other = await conn.fetchrow(SELECT_ROW_BY_HASH, chain, lo, hi, stored_prev)
            if other is not None:
                detail = f"links to seq {other['seq']} ({other['id']}) instead of seq {seq - 1}"
                return count, brk(seq, event_id, "reordered", detail)
            if self_ok:
                return count, brk(seq, event_id, "inserted", "links to no row of the chain")
            return count, brk(seq, event_id, "altered", "prev_hash does not match the previous row")
        if not self_ok:
            return count, brk(seq, event_id, "altered", "content does not match its hash")
        last_seq, prev = seq, stored_hash

    if head is None:
        return count, brk(last_seq, None, "inserted", "rows without a chain head (not written by the writer)")
    if head[0] > last_seq:
        return count, brk(last_seq + 1, None, "missing", f"chain ends at seq {last_seq}, head says {head[0]}")
    if head[1] != prev:
        return count, brk(last_seq, None, "altered", "last row does not match the chain head")
    return count, None
