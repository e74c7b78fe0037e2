"""The audit writer on real Redis and Postgres: every event stored once, whatever fails."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from _audit_fixtures import TcpProxy, add_service, count_rows, emit_many, new_sid

from audit.queries import query_events
from audit.verify import verify
from audit.writer import DEAD_LETTERS, GROUP, AuditWriter
from core import keys
from core.events import emit_event


async def pending(redis: aioredis.Redis) -> int:
    total = 0
    for stream in await redis.smembers(keys.EVENT_STREAMS):
        info = await redis.xpending(stream, GROUP)
        total += info["pending"]
    return total


async def stream_lengths(redis: aioredis.Redis) -> int:
    return sum([await redis.xlen(s) for s in await redis.smembers(keys.EVENT_STREAMS)])


async def test_events_of_every_stream_are_stored_once_and_removed_from_redis(redis, pg):
    services = [await add_service(pg), await add_service(pg), None]
    ids = await emit_many(redis, services, 300)

    writer = AuditWriter(redis, pg, consumer="w1", batch_size=100)
    assert await writer.drain_once() == 300
    assert await writer.drain_once() == 0

    assert await count_rows(pg) == (300, 300)
    stored = {r["id"] for r in await pg.fetch("SELECT id FROM audit_events")}
    assert stored == set(ids)
    assert await stream_lengths(redis) == 0 and await pending(redis) == 0
    result = await verify(pg)
    assert result.ok and result.events == 300 and result.chains == 3


async def test_batch_committed_but_not_acknowledged_is_not_stored_twice(redis, pg):
    service = await add_service(pg)
    await emit_many(redis, [service], 250)

    class DiesBeforeAck(AuditWriter):
        async def _acknowledge(self, entries):
            raise ConnectionError("killed after commit, before XACK")

    with pytest.raises(ConnectionError):
        await DiesBeforeAck(redis, pg, consumer="dead", batch_size=250).drain_once()
    assert await count_rows(pg) == (250, 250)
    assert await pending(redis) == 250

    rescuer = AuditWriter(redis, pg, consumer="rescuer", claim_idle_ms=0)
    assert await rescuer.drain_once() == 250
    assert rescuer.stored == 0  # all were already there: only acknowledged
    assert await count_rows(pg) == (250, 250)
    assert await pending(redis) == 0
    assert (await verify(pg)).ok


class Killed(Exception):
    """The writer process died."""


@pytest.mark.parametrize("die_after_s", [0.0, 0.005, 0.02, 0.05, 1.0])
async def test_writer_killed_mid_batch_loses_nothing(redis, pg, die_after_s):
    services = [await add_service(pg), await add_service(pg)]
    ids = await emit_many(redis, services, 1500)

    class DiesMidBatch(AuditWriter):
        async def _store(self, entries):
            # The store is cancelled wherever it is after die_after_s: before the transaction,
            # mid-COPY, or (1.0 s) after the commit but before the XACK.
            task = asyncio.create_task(super()._store(entries))
            await asyncio.sleep(die_after_s)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise Killed

    with pytest.raises(Killed):
        await DiesMidBatch(redis, pg, consumer="crashed", batch_size=1500).drain_once()
    assert await pending(redis) == 1500

    # A second writer claims what the first left pending; whatever the first committed is skipped.
    rescuer = AuditWriter(redis, pg, consumer="rescuer", claim_idle_ms=0)
    assert await rescuer.drain_once() == 1500
    assert await count_rows(pg) == (1500, 1500)
    assert {r["id"] for r in await pg.fetch("SELECT id FROM audit_events")} == set(ids)
    assert await pending(redis) == 0
    assert (await verify(pg)).ok


async def test_two_writers_stealing_each_others_entries_store_each_event_once(redis, pg):
    services = [await add_service(pg) for _ in range(3)] + [None]
    await emit_many(redis, services, 3000)

    # claim_idle_ms=0: each writer also claims entries the other is storing right now, the worst
    # case for duplicates; the chain lock and the id check keep it exactly once.
    a = AuditWriter(redis, pg, consumer="a", batch_size=200, claim_idle_ms=0)
    b = AuditWriter(redis, pg, consumer="b", batch_size=200, claim_idle_ms=0)
    await asyncio.gather(a.drain_once(), b.drain_once())
    await AuditWriter(redis, pg, consumer="c", claim_idle_ms=0).drain_once()

    assert await count_rows(pg) == (3000, 3000)
    assert a.stored + b.stored == 3000
    assert await pending(redis) == 0
    result = await verify(pg)
    assert result.ok, result.breaks


async def test_postgres_outage_keeps_events_in_redis_until_it_returns(redis, pg, database_url):
    target = urlsplit(database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    proxied_url = database_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}")
    pool = await asyncpg.create_pool(proxied_url, min_size=1, max_size=2)
    service = await add_service(pg)
    stop = asyncio.Event()
    writer = AuditWriter(redis, pool, consumer="w", batch_size=50, block_ms=50, store_timeout_s=2)
    task = asyncio.create_task(writer.run(stop))
    try:
        await emit_many(redis, [service], 100)
        await _until(lambda: _rows(pg), 100)

        await proxy.stop()  # Postgres unreachable from the writer
        await emit_many(redis, [service], 400)
        await asyncio.sleep(0.5)
        assert (await count_rows(pg))[0] == 100
        assert await stream_lengths(redis) == 400  # waiting in Redis, nothing dropped

        await proxy.start()  # back on the same port
        await _until(lambda: _rows(pg), 500, timeout_s=20)
        await _until(lambda: stream_lengths(redis), 0)
    finally:
        stop.set()
        await task
        await pool.close()
        await proxy.stop()
    assert await count_rows(pg) == (500, 500)
    assert (await verify(pg)).ok


async def test_malformed_entry_is_set_aside_and_does_not_block_the_stream(redis, pg):
    stream = keys.events(None)
    await redis.sadd(keys.EVENT_STREAMS, stream)
    await redis.xadd(
        stream, {"id": "EV" + "0" * 32, "type": "key.created", "ts_ms": "1", "data": "{not json"}
    )
    await emit_event(redis, service_sid=None, type="key.created", data={"sid": new_sid("SK")})

    assert await AuditWriter(redis, pg, consumer="w").drain_once() == 2
    assert (await count_rows(pg))[0] == 1
    dead = await redis.xrange(DEAD_LETTERS)
    assert len(dead) == 1 and dead[0][1]["data"] == "{not json" and dead[0][1]["_stream"] == stream


@pytest.mark.parametrize("policy", ["keep", "redact", "hash"])
async def test_message_bodies_follow_the_service_body_policy(redis, pg, policy):
    service = await add_service(pg, body_policy=policy)
    await emit_event(
        redis,
        service_sid=service,
        type="interaction.created",
        data={"session_sid": "KC1", "from": "+15551230001", "to": "+15551230002", "body": "meet at 5"},
    )
    await AuditWriter(redis, pg, consumer="w").drain_once()

    stored = orjson.loads(await pg.fetchval("SELECT data FROM audit_events"))
    assert "meet at 5" not in orjson.dumps(stored).decode()  # never in clear in the table
    assert "+15551230001" not in orjson.dumps(stored).decode()
    rows, _ = await query_events(pg, service_sids={service}, number="+15551230001")
    body = rows[0].data["body"]
    if policy == "keep":
        assert body == "meet at 5"
    elif policy == "redact":
        assert body == "[redacted]"
    else:
        assert body.startswith("sha256:") and len(body) == len("sha256:") + 64
    assert rows[0].data["from"] == "+15551230001"


async def _rows(pg: asyncpg.Pool) -> int:
    return (await count_rows(pg))[0]


async def _until(read, expected: int, *, timeout_s: float = 10) -> None:
    async with asyncio.timeout(timeout_s):
        while (value := await read()) != expected:  # noqa: ASYNC110 (polling Postgres: no event to await)
            await asyncio.sleep(0.05)
    assert value == expected


async def test_dead_consumers_leave_the_group_and_live_ones_stay(redis, pg) -> None:
    service = await add_service(pg)
    await emit_many(redis, [service], 5)
    gone = AuditWriter(redis, pg, consumer="host-1234")
    await gone.drain_once()  # read and acknowledged everything: nothing pending
    await emit_many(redis, [service], 3)
    busy = AuditWriter(redis, pg, consumer="host-5678")
    await busy._streams()
    await redis.xreadgroup(GROUP, "host-5678", {keys.events(service): ">"}, count=1)  # one pending
    alive = AuditWriter(redis, pg, consumer="host-9999")
    assert await alive.forget_dead_consumers(idle_ms=0) == 1
    names = {c["name"] for c in await redis.xinfo_consumers(keys.events(service), GROUP)}
    assert "host-1234" not in names and "host-5678" in names  # pending entries keep a consumer
