"""Integrity of the audit log: append-only, tampering found by verify, erasure and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from _audit_fixtures import add_service, emit_many

from audit.erase import erase_number
from audit.queries import query_events
from audit.retention import prune
from audit.verify import verify
from audit.writer import AuditWriter
from core.errors import InvalidParameter


async def stored_log(redis, pg, count=20, ts_ms=None):
    service = await add_service(pg)
    await emit_many(redis, [service], count, ts_ms=ts_ms)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    return service


async def as_superuser_bypassing_triggers(pg: asyncpg.Pool, *statements: str) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        for sql in statements:
            await conn.execute(sql)


async def test_stored_events_cannot_be_updated_or_deleted(redis, pg):
    await stored_log(redis, pg)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.execute("UPDATE audit_events SET type = 'x' WHERE seq = 3")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await pg.execute("DELETE FROM audit_events WHERE seq = 3")
    assert (await verify(pg)).ok


async def test_verify_finds_an_altered_row(redis, pg):
    service = await stored_log(redis, pg)
    await as_superuser_bypassing_triggers(
        pg, "UPDATE audit_events SET type = 'session.deleted' WHERE seq = 7"
    )
    result = await verify(pg)
    assert not result.ok
    brk = result.first_break
    assert (brk.service_sid, brk.seq, brk.problem) == (service, 7, "altered")
    assert brk.event_id == await pg.fetchval("SELECT id FROM audit_events WHERE seq = 7")


async def test_verify_finds_a_deleted_row(redis, pg):
    await stored_log(redis, pg)
    await as_superuser_bypassing_triggers(pg, "DELETE FROM audit_events WHERE seq = 5")
    brk = (await verify(pg)).first_break
    assert (brk.seq, brk.problem) == (5, "missing")


async def test_verify_finds_a_deleted_tail(redis, pg):
    await stored_log(redis, pg)
    await as_superuser_bypassing_triggers(pg, "DELETE FROM audit_events WHERE seq = 20")
    brk = (await verify(pg)).first_break
    assert (brk.seq, brk.problem) == (20, "missing")


async def test_verify_finds_reordered_rows(redis, pg):
    await stored_log(redis, pg)
    await as_superuser_bypassing_triggers(
        pg,
        "UPDATE audit_events SET seq = -1 WHERE seq = 9",
        "UPDATE audit_events SET seq = 9 WHERE seq = 10",
        "UPDATE audit_events SET seq = 10 WHERE seq = -1",
    )
    brk = (await verify(pg)).first_break
    assert (brk.seq, brk.problem) == (9, "reordered")


async def test_verify_finds_an_inserted_row(redis, pg):
    await stored_log(redis, pg)
    await as_superuser_bypassing_triggers(
        pg,
        "INSERT INTO audit_events (ts, id, service_sid, seq, type, session_sid, numbers, data, prev_hash, hash)"
        " SELECT ts, 'EVforged', service_sid, 21, type, session_sid, numbers, data, hash, hash"
        " FROM audit_events WHERE seq = 20",
    )
    brk = (await verify(pg)).first_break
    assert (brk.seq, brk.event_id, brk.problem) == (21, "EVforged", "inserted")


async def test_erasure_makes_the_number_unreadable_and_keeps_verify_green(redis, pg):
    service = await stored_log(redis, pg, count=100)
    before, _ = await query_events(pg, service_sids={service}, number="+15550000003")
    assert len(before) == 2 and before[0].data["body"].startswith("message ")
    raw_before = await pg.fetch("SELECT id, data, hash FROM audit_events ORDER BY id")

    assert await erase_number(pg, "+15550000003", actor="dpo@example.com") == 2

    after, _ = await query_events(pg, service_sids={service}, number="+15550000003")
    assert after == []  # the number no longer leads anywhere
    rows, _ = await query_events(pg, service_sids={service}, number="+15550000999", limit=1000)
    erased = [r for r in rows if r.id in {e.id for e in before}]
    assert len(erased) == 2
    for r in erased:
        assert r.data["from"] == "[erased]" and r.data["body"] == "[erased]"
        assert "+15550000003" not in orjson.dumps(r.as_dict()).decode()
        assert "[erased]" in r.numbers and "+15550000999" in r.numbers
    others = [r for r in rows if r.id not in {e.id for e in before}]
    assert all(r.data["body"].startswith("message ") for r in others)

    # Chained rows untouched (byte for byte), the chain verifies, and the erasure is on record.
    raw_after = await pg.fetch(
        "SELECT id, data, hash FROM audit_events WHERE type <> 'audit.erased' ORDER BY id"
    )
    assert raw_after == raw_before
    assert (await verify(pg)).ok
    [record], _ = await query_events(pg, service_sids=None, types={"audit.erased"})
    assert record.data["actor"] == "dpo@example.com" and record.data["events"] == 2
    assert "+15550000003" not in orjson.dumps(record.as_dict()).decode()


async def test_erasure_refuses_what_is_not_a_number(pg):
    with pytest.raises(InvalidParameter):
        await erase_number(pg, "%", actor="x")


async def test_new_events_after_an_erasure_are_readable(redis, pg):
    service = await stored_log(redis, pg, count=10)
    await erase_number(pg, "+15550000001", actor="dpo")
    await emit_many(redis, [service], 2)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    rows, _ = await query_events(pg, service_sids={service}, number="+15550000001")
    assert [r.data["from"] for r in rows] == ["+15550000001"]
    assert (await verify(pg)).ok


async def test_retention_drops_whole_old_months_only(redis, pg):
    now = datetime.now(UTC)
    old_ms = int((now - timedelta(days=500)).timestamp() * 1000)
    recent_ms = int((now - timedelta(days=30)).timestamp() * 1000)
    service = await stored_log(redis, pg, count=10, ts_ms=old_ms)
    await emit_many(redis, [service], 10, ts_ms=recent_ms)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    old_partition = "audit_events_p" + datetime.fromtimestamp(old_ms / 1000, UTC).strftime("%Y%m")

    dropped = await prune(pg, older_than=timedelta(days=400))

    assert old_partition in dropped
    assert all(name < "audit_events_p" + (now - timedelta(days=400)).strftime("%Y%m") for name in dropped)
    assert await pg.fetchval("SELECT to_regclass($1)", old_partition) is None
    types = [r["type"] for r in await pg.fetch("SELECT type FROM audit_events ORDER BY ts")]
    assert types == ["interaction.created"] * 10 + ["audit.pruned"]
    assert (await verify(pg)).ok
    # A late event for the dropped month is still accepted: the writer recreates the partition.
    await emit_many(redis, [service], 1, ts_ms=old_ms)
    writer = AuditWriter(redis, pg, consumer="w")
    assert await writer.drain_once() == 1
    assert (await verify(pg)).ok


async def test_retention_keeps_a_month_that_is_only_partly_older(redis, pg):
    now = datetime(2025, 6, 15, tzinfo=UTC)
    ts_ms = int(datetime(2025, 5, 20, tzinfo=UTC).timestamp() * 1000)
    await stored_log(redis, pg, count=3, ts_ms=ts_ms)
    # Cut-off 2025-05-25: May is partly older, partly newer: kept whole.
    assert "audit_events_p202505" not in await prune(pg, older_than=timedelta(days=21), now=now)
    assert await pg.fetchval("SELECT count(*) FROM audit_events WHERE type = 'interaction.created'") == 3
