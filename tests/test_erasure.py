"""`maskline audit erase` reaches every copy of a number: Redis (sessions, pairs, sticky proxy,
opt-outs, events not yet written, dead letters) and Postgres (the audit log), and proves it with a
full scan of both; the other participant's record stays."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from cli_helpers import maskline
from relay_harness import COURIER, CUSTOMER, GUEST, HOST, PROXY_A, PROXY_B, PROXY_C, Relay

from audit.erase import catch_up
from audit.queries import query_events
from audit.writer import GROUP, AuditWriter
from core import keys
from maskline.erasure import find_copies, number_pattern
from relay.credentials import create_key
from sessions.erasure import erase_number_from_redis

DIGITS = "4155550101"  # CUSTOMER without "+1": what any copy of the number contains


@pytest.fixture
async def relay(settings, redis, pg, fake_twilio) -> AsyncIterator[Relay]:
    r = await Relay(settings, redis, pg, fake_twilio).start()
    try:
        yield r
    finally:
        await r.stop()


async def _audit_query(relay: Relay, query: str) -> dict[str, Any]:
    sid, secret = await create_key(relay.pg, "auditor", permissions=frozenset({"audit"}))
    assert relay.http is not None
    headers = {"Authorization": "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()}
    async with relay.http.get(relay.local + "/v1/Audit/Events?" + query, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = orjson.loads(await resp.read())
        return body


async def _raw_scan(relay: Relay) -> list[str]:
    """Every key of the test DB (not only ml:*) and every text of every table holding the digits,
    without the regular expression of maskline/erasure.py: plain substrings."""
    found = []
    async for key in relay.redis.scan_iter(match="*"):
        kind = await relay.redis.type(key)
        values: list[Any] = [key]
        if kind == "string":
            values.append(await relay.redis.get(key))
        elif kind == "hash":
            values += [x for kv in (await relay.redis.hgetall(key)).items() for x in kv]
        elif kind in ("set", "zset", "list"):
            values += (
                await relay.redis.smembers(key)
                if kind == "set"
                else await relay.redis.zrange(key, 0, -1)
                if kind == "zset"
                else await relay.redis.lrange(key, 0, -1)
            )
        elif kind == "stream":
            values += [x for _, entry in await relay.redis.xrange(key) for kv in entry.items() for x in kv]
        found += [f"redis {key}" for v in values if v is not None and DIGITS in str(v)]
    columns = await relay.pg.fetch(
        """SELECT table_schema, table_name, column_name FROM information_schema.columns
            WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"""
    )
    for schema, table, column in columns:
        n = await relay.pg.fetchval(
            f'SELECT count(*) FROM "{schema}"."{table}" WHERE "{column}"::text LIKE $1', f"%{DIGITS}%"
        )
        if n:
            found.append(f"postgres {schema}.{table}.{column}: {n}")
    return found


def test_the_pattern_finds_every_usual_form_of_the_number() -> None:
    regex = re.compile(number_pattern(CUSTOMER))
    for form in (
        CUSTOMER,
        "14155550101",
        DIGITS,
        "+1 (415) 555-0101",
        "415.555.0101",
        "whatsapp:+14155550101",
    ):
        assert regex.search(form), form
    assert not regex.search(COURIER) and not regex.search("+14155550201")


async def test_erase_reaches_every_copy_and_keeps_the_other_participant(relay: Relay) -> None:
    redis, pg = relay.redis, relay.pg
    ks = await relay.service(TextsPerMinute=100, CallsPerHour=100)  # (their counters name the number)
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)

    # A first session: texts both ways and a call, written to the audit log, then STOP (an
    # opt-out key) and closed (its pairs cool off).
    first = await relay.session(ks, CUSTOMER, COURIER)
    to_courier, to_customer = first["proxy"][CUSTOMER], first["proxy"][COURIER]
    for body in ("where are you?", "at the door"):
        assert (await relay.sms(CUSTOMER, to_courier, body))[0] == 200
        assert (await relay.sms(COURIER, to_customer, f"re: {body}"))[0] == 200
    assert (await relay.call(COURIER, to_customer))[0] == 200
    assert await AuditWriter(redis, pg, consumer="w").drain_once() > 0
    assert (await relay.sms(CUSTOMER, to_courier, "STOP"))[0] == 200
    assert await redis.exists(keys.optout(ks, CUSTOMER, to_courier))
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{first['sid']}", {"Status": "closed"})
    assert status == 200
    assert await redis.pttl(keys.pair(ks, CUSTOMER, to_courier)) > 0  # cooling

    # A second, live session of the same two, with a text not yet written (pending in the stream).
    second = await relay.session(ks, CUSTOMER, COURIER)
    assert (await relay.sms(CUSTOMER, second["proxy"][CUSTOMER], "second order, call me"))[0] == 200
    # Somebody else's session: untouched by the erasure.
    other = await relay.session(ks, HOST, GUEST)
    assert (await relay.sms(HOST, other["proxy"][HOST], "hello guest"))[0] == 200
    # A compliance read by the number (audit.queried holds it) and a malformed entry that the
    # writer will set aside as a dead letter.
    found = await _audit_query(relay, f"Number=%2B1{DIGITS}")
    assert found["events"]
    await redis.xadd(keys.events(ks), {"type": "", "data": orjson.dumps({"from": CUSTOMER}).decode()})
    assert DIGITS in str([k async for k in redis.scan_iter()]) and await redis.xlen(keys.events(ks)) > 0

    done = await maskline(
        "audit",
        "erase",
        "--number",
        CUSTOMER,
        "--actor",
        "dpo",
        database_url=relay.settings.database_url,
        redis_url=relay.settings.redis_url,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 session(s) deleted (1 live, closed first)" in done.stdout
    assert "no copy of the number is left" in done.stdout
    assert "1 dead letter(s) deleted" in done.stdout

    # Nothing left anywhere: the check of maskline/erasure.py on the whole test DB, and plain
    # substrings over every key and every column.
    assert await find_copies(redis, pg, CUSTOMER, match="*") == []
    assert await _raw_scan(relay) == []
    # The streams were drained: every acknowledged entry deleted, nothing pending.
    for stream in await redis.smembers(keys.EVENT_STREAMS):
        assert await redis.xlen(stream) == 0, stream
        assert (await redis.xpending(stream, GROUP))["pending"] == 0

    # Targeted: the other participants' records stay, readable.
    courier_events, _ = await query_events(pg, service_sids=None, number=COURIER, limit=1000)
    assert {"session.created", "session.deleted", "interaction.created"} <= {e.type for e in courier_events}
    created = [e for e in courier_events if e.type == "session.created"]
    assert all(COURIER in e.numbers and "[erased]" in e.numbers for e in created)
    host_events, _ = await query_events(pg, service_sids=None, number=HOST, limit=1000)
    assert any(e.type == "interaction.created" for e in host_events)
    assert await redis.exists(keys.session(ks, other["sid"]))
    assert await redis.exists(keys.pair(ks, COURIER, to_customer))  # the courier's pair still cools
    # in_use counts only the live session left.
    for proxy in (PROXY_A, PROXY_B, PROXY_C):
        live = sum(1 for p in other["proxy"].values() if p == proxy)
        assert int(await redis.hget(keys.number(ks, proxy), "in_use")) == live, proxy
    erased, _ = await query_events(pg, service_sids=None, types={"audit.erased"})
    assert erased and erased[0].data["actor"] == "dpo" and erased[0].data["events"] > 0

    done = await maskline(
        "audit", "verify", database_url=relay.settings.database_url, redis_url=relay.settings.redis_url
    )
    assert done.returncode == 0, done.stdout + done.stderr


async def test_redis_erasure_counts_and_leaves_no_key_of_the_number(relay: Relay) -> None:
    redis = relay.redis
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    assert (await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "STOP"))[0] == 200
    # A session the number was removed from: its participant hash and cooling pair stay behind.
    left = await relay.session(ks, CUSTOMER, HOST)
    removed = left["participants"][CUSTOMER]
    path = f"/v1/Services/{ks}/Sessions/{left['sid']}/Participants/{removed}"
    assert (await relay.api("DELETE", path))[0] == 204
    assert await redis.exists(keys.participant(ks, removed))

    counts = await erase_number_from_redis(redis, CUSTOMER)

    assert counts.services == 1 and counts.sessions_deleted == 2 and counts.sessions_closed == 2
    assert counts.participants == 1  # the removed one (delete_session took the others)
    assert counts.pairs == 2  # the first session's pair and the removed participant's, both cooling
    assert counts.last == 1 and counts.optouts == 1
    assert not await redis.exists(keys.session(ks, sess["sid"]), keys.session(ks, left["sid"]))
    names = [k async for k in redis.scan_iter(match="ml:*")]
    assert not [k for k in names if DIGITS in k]
    # Pairs released through delete_session: no proxy number counts a live session any more.
    for proxy in (PROXY_A, PROXY_B, PROXY_C):
        assert int(await redis.hget(keys.number(ks, proxy), "in_use")) == 0, proxy
    # The closes and deletes went through delete_session: their events wait for the writer.
    types = [f["type"] for _, f in await redis.xrange(keys.events(ks))]
    assert types.count("session.closed") == 2 and types.count("session.deleted") == 2


async def test_catch_up_waits_for_another_writer_and_sweeps_acknowledged_leftovers(relay: Relay) -> None:
    redis, pg = relay.redis, relay.pg
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    await relay.session(ks, CUSTOMER, COURIER)
    stream = keys.events(ks)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    await relay.session(ks, HOST, GUEST)
    # Another writer read the new entries and died before storing them; one more entry was
    # acknowledged but never deleted (XDEL lost).
    entries = await redis.xreadgroup(GROUP, "dead-writer", {stream: ">"})
    ids = [entry_id for _, batch in entries for entry_id, _ in batch]
    assert ids
    leftover = await redis.xadd(stream, {"type": "x", "data": "{}"})
    await redis.xreadgroup(GROUP, "other", {stream: ">"})
    await redis.xack(stream, GROUP, leftover)

    result = await catch_up(redis, pg, consumer="eraser", claim_idle_ms=100, timeout_s=10)

    assert result.left == 0 and result.swept == 1 and result.stored == len(ids)
    assert await redis.xlen(stream) == 0
    consumers = {c["name"] for c in await redis.xinfo_consumers(stream, GROUP)}
    assert "eraser" not in consumers


async def test_an_invalid_number_is_refused_before_anything_is_touched(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    await relay.session(ks, CUSTOMER, COURIER)
    before = sorted([k async for k in relay.redis.scan_iter(match="ml:*")])
    done = await maskline(
        "audit",
        "erase",
        "--number",
        "4155550101",
        database_url=relay.settings.database_url,
        redis_url=relay.settings.redis_url,
    )
    assert done.returncode == 2 and "E.164" in done.stderr
    assert sorted([k async for k in relay.redis.scan_iter(match="ml:*")]) == before
