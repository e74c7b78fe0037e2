"""Inbound routing by (From, To) at the domain level: the pair finds the session, nothing else."""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple

import orjson
import pytest
from pool_helpers import COURIER, CUSTOMER, GUEST, HOST, World, proxies

from core import keys
from core.paging import PageRequest
from sessions.models import Replay, is_slot_field
from sessions.routing import Router, classify_keyword


@pytest.fixture
async def world(pg, redis) -> World:
    return World(pg, redis)


class Paired(NamedTuple):
    """A Service with two numbers, a CUSTOMER-COURIER session on them, and a router."""

    ks: str
    view: dict[str, Any]
    given: dict[str, str]  # participant number -> the proxy number it was given
    router: Router


@pytest.fixture
async def paired(world: World) -> Paired:
    ks = await world.service()
    await world.pool(ks, "+14155550201", "+14155550202")
    view = await world.session(ks, CUSTOMER, COURIER)
    return Paired(ks, view, proxies(view), Router(world.redis, clock=world.clock))


async def test_text_from_customer_routes_to_courier_via_couriers_proxy(world: World, paired: Paired) -> None:
    ks, view, given, router = paired
    route = await router.route_text(from_=CUSTOMER, to=given[CUSTOMER], message_sid="SM1", body="hi")
    assert route.outcome == "relay"
    assert route.outbound["identifier"] == COURIER
    assert route.outbound["proxy_identifier"] == given[COURIER]
    assert route.session["status"] == "in-progress"


async def test_two_sessions_sharing_a_proxy_number_route_by_sender(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, "+14155550201")
    await world.session(ks, CUSTOMER, COURIER)
    await world.session(ks, HOST, GUEST)
    router = Router(world.redis, clock=world.clock)
    a = await router.route_call(from_=CUSTOMER, to="+14155550201", call_sid="CA1")
    b = await router.route_call(from_=HOST, to="+14155550201", call_sid="CA2")
    assert (a.outbound["identifier"], b.outbound["identifier"]) == (COURIER, GUEST)


async def test_stranger_and_retry_and_closed_session(world: World) -> None:
    ks = await world.service(cool_off_s=3600)
    await world.pool(ks, "+14155550201")
    view = await world.session(ks, CUSTOMER, COURIER)
    router = Router(world.redis, clock=world.clock)
    stranger = await router.route_text(from_=HOST, to="+14155550201", message_sid="SM9", body="")
    assert stranger.outcome == "no_session"
    first = await router.route_text(from_=CUSTOMER, to="+14155550201", message_sid="SM2", body="")
    assert first.outcome == "relay"
    await router.remember_answer(ks, "SM2", Replay.HELP, first.interaction_sid)
    again = await router.route_text(from_=CUSTOMER, to="+14155550201", message_sid="SM2", body="")
    assert again.outcome == "duplicate" and again.replay == Replay.HELP
    assert again.interaction["sid"] == first.interaction_sid
    await world.sessions.close_session(ks, view["sid"])
    late = await router.route_text(from_=CUSTOMER, to="+14155550201", message_sid="SM3", body="")
    assert late.outcome == "no_session"
    assert late.previous["sid"] == view["sid"]


async def test_expired_but_unswept_session_is_not_relayed(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, "+14155550201")
    await world.session(ks, CUSTOMER, COURIER, ttl_s=60)
    router = Router(world.redis, clock=world.clock)
    world.clock.advance(61)
    route = await router.route_text(from_=CUSTOMER, to="+14155550201", message_sid="SM4", body="")
    assert route.outcome == "no_session"
    assert route.previous["closed_reason"] == "ttl"


def test_opt_out_words_ignore_case_and_space() -> None:
    assert classify_keyword("  stop ") == "optout"
    assert classify_keyword("StopAll") == "optout"
    assert classify_keyword("unstop") == "optin"
    assert classify_keyword("help") == "help"
    assert classify_keyword("stop it please") == ""


async def test_interactions_in_one_millisecond_list_newest_first_in_the_order_they_happened(
    world: World, paired: Paired
) -> None:
    """The clock does not move: three texts land in the same millisecond. The list (and each
    interaction's created time, which the audit log orders by) still follows the order they came."""
    ks, view, given, router = paired
    sids = []
    for n, (sender, receiver) in enumerate([(CUSTOMER, COURIER), (COURIER, CUSTOMER), (CUSTOMER, COURIER)]):
        route = await router.route_text(from_=sender, to=given[sender], message_sid=f"SM{n}", body=str(n))
        assert route.outcome == "relay" and route.outbound["identifier"] == receiver
        sids.append(route.interaction_sid)
    page = await router.interactions.list(ks, view["sid"], PageRequest(size=10))
    assert page is not None
    assert [ix["sid"] for ix in page.items] == sids[::-1]
    created = [int(ix["created_ms"]) for ix in page.items]
    assert created == sorted(created, reverse=True) and len(set(created)) == 3


async def test_a_two_party_session_stays_in_redis_compact_encoding_and_old_sessions_still_route(
    world: World,
) -> None:
    """A two-party session's hash keeps Redis' compact encoding (its participant list fits in 64
    bytes), and a session written in the earlier comma-separated form routes, lists and closes."""
    ks = await world.service()
    await world.pool(ks, "+14155550201", "+14155550202", "+14155550203")
    view = await world.session(ks, CUSTOMER, COURIER)
    session_key = keys.session(ks, view["sid"])
    assert await world.redis.object("encoding", session_key) in ("listpack", "ziplist")

    old = await world.session(ks, HOST, GUEST)
    old_key = keys.session(ks, old["sid"])
    sids = [p["sid"] for p in old["participants"]]
    await world.redis.hset(old_key, "parts", ",".join(sids))
    assert [p["sid"] for p in await world.sessions.list_participants(ks, old["sid"])] == sids
    given = proxies(old)
    route = await Router(world.redis, clock=world.clock).route_text(
        from_=HOST, to=given[HOST], message_sid="SMold", body="hi"
    )
    assert route.outcome == "relay" and route.outbound["identifier"] == GUEST
    await world.sessions.close_session(ks, old["sid"])
    late = await Router(world.redis, clock=world.clock).route_text(
        from_=HOST, to=given[HOST], message_sid="SMold2", body="hi"
    )
    assert late.outcome == "no_session"


async def test_a_session_stores_no_sid_and_no_empty_field_yet_reads_as_before(world: World) -> None:
    """Redis memory: a session's and a participant's hashes leave out their sid (the key's) and
    their empty fields, and a session's hash its default mode, TTL and expiry; the views fill
    them in, and a session written in the earlier, complete form reads the same."""
    ks = await world.service()
    await world.pool(ks, "+14155550201", "+14155550202")
    view = await world.session(ks, CUSTOMER, COURIER)
    kc, kp = view["sid"], view["participants"][0]["sid"]
    stored = await world.redis.hgetall(keys.session(ks, kc))
    assert "sid" not in stored and all(value != "" for value in stored.values()), stored
    assert not {"mode", "ttl", "expires_at_ms"} & set(stored), stored
    assert (view["mode"], view["ttl"], view["expires_at_ms"]) == ("voice-and-message", "0", "0")
    # Its times are its created_ms until something happens to it. Its participants are fields of
    # it (PARTICIPANT_SLOT), their empty ones, their times (the session's) and, while it is live,
    # their PN sids (the pool's) left out too.
    assert not {"updated_ms", "started_ms", "last_activity_ms"} & set(stored), stored
    assert view["updated_ms"] == view["started_ms"] == view["last_activity_ms"] == stored["created_ms"]
    assert not await world.redis.exists(keys.participant(ks, kp))
    assert {f for f in stored if is_slot_field(f)} == {"1i", "1x", "2i", "2x"}, stored
    assert all(p["proxy_identifier_sid"].startswith("PN") for p in view["participants"])

    fetched = await world.sessions.get_session(ks, kc)
    assert fetched["sid"] == kc and fetched["unique_name"] == "" and fetched["closed_reason"] == ""
    assert (await world.sessions.get_participant(ks, kc, kp))["sid"] == kp
    assert [p["sid"] for p in await world.sessions.list_participants(ks, kc)] == [
        p["sid"] for p in view["participants"]
    ]
    listed = await world.sessions.list_sessions(ks, PageRequest(size=10))
    assert [s["sid"] for s in listed.items] == [kc]

    # A TTL is stored while it is not the default, and its expiry with it.
    timed = await world.sessions.update_session(ks, kc, ttl_s=600)
    stored = await world.redis.hgetall(keys.session(ks, kc))
    assert stored["ttl"] == "600" and int(stored["expires_at_ms"]) > 0
    assert timed["expires_at_ms"] == stored["expires_at_ms"]
    await world.sessions.update_session(ks, kc, ttl_s=0)
    assert not {"ttl", "expires_at_ms"} & set(await world.redis.hgetall(keys.session(ks, kc)))

    # The earlier form (sid, empty fields and defaults stored) is read alike.
    await world.redis.hset(
        keys.session(ks, kc),
        mapping={"sid": kc, "unique_name": "", "ended_ms": "", "mode": "voice-and-message", "ttl": "0"},
    )
    fetched = {**fetched, "updated_ms": (await world.sessions.get_session(ks, kc))["updated_ms"]}
    assert await world.sessions.get_session(ks, kc) == fetched
    closed = await world.sessions.close_session(ks, kc)
    assert closed["sid"] == kc and closed["status"] == "closed"


async def test_a_session_whose_participants_have_hashes_of_their_own_reads_alike_and_moves_them_in(
    world: World, paired: Paired
) -> None:
    """After an upgrade: a session written when each participant had a `part:{KP}` hash reads as
    before, routes as before, and its first script moves its participants into its hash."""
    ks, view, given, router = paired
    kc = view["sid"]
    sk = keys.session(ks, kc)
    stored = await world.redis.hgetall(sk)
    before = await world.sessions.list_participants(ks, kc)
    for n, part in enumerate(before, start=1):  # the earlier layout
        await world.redis.hset(
            keys.participant(ks, part["sid"]),
            mapping={
                "session_sid": kc,
                "identifier": part["identifier"],
                "proxy_identifier": part["proxy_identifier"],
                "proxy_identifier_sid": part["proxy_identifier_sid"],
                "created_ms": part["created_ms"],
                "updated_ms": part["updated_ms"],
            },
        )
        await world.redis.hdel(sk, *[f for f in stored if f.startswith(str(n)) and is_slot_field(f)])
    assert await world.sessions.list_participants(ks, kc) == before
    assert await world.sessions.get_participant(ks, kc, before[1]["sid"]) == before[1]

    route = await router.route_text(from_=CUSTOMER, to=given[CUSTOMER], message_sid="SMmove1", body="hi")
    assert route.outcome == "relay" and route.outbound["identifier"] == COURIER
    assert route.outbound["proxy_identifier"] == given[COURIER]
    assert not any([await world.redis.exists(keys.participant(ks, p["sid"])) for p in before])
    assert {f for f in await world.redis.hgetall(sk) if is_slot_field(f)} == {
        f for f in stored if is_slot_field(f)
    }
    assert await world.sessions.list_participants(ks, kc) == before
    # Its pairs of the earlier form are released as theirs when it closes: they cool off.
    await world.sessions.close_session(ks, kc)
    for part in before:
        pair = keys.pair(ks, part["identifier"], part["proxy_identifier"])
        assert await world.redis.get(pair) == f"{kc}:{part['sid']}" and await world.redis.pttl(pair) > 0


async def test_records_written_before_the_hot_window_get_one_even_once_they_are_past_it(
    world: World, paired: Paired
) -> None:
    """After an upgrade, a live session's earlier records (no TTL, no count) get the hot window at
    its next interaction, those older than the window too (not dropped from the index first and
    left in Redis for good)."""
    ks, view, given, router = paired
    first = await router.route_text(from_=CUSTOMER, to=given[CUSTOMER], message_sid="SMold1", body="hi")
    old_key = keys.interaction(ks, str(first.interaction_sid))
    for key in (old_key, keys.session_interactions(ks, view["sid"])):
        await world.redis.persist(key)  # as the earlier release wrote them
    await world.redis.hdel(keys.session(ks, view["sid"]), "ix_count")
    world.clock.advance(router.interactions.hot_ms / 1000 + 60)
    await router.route_text(from_=COURIER, to=given[COURIER], message_sid="SMold2", body="hello")
    assert 0 < await world.redis.pttl(old_key) <= router.interactions.hot_ms


async def test_status_callbacks_that_race_never_move_a_status_back(world: World, paired: Paired) -> None:
    """Twilio posts `sent` and `delivered` in requests of their own, which may be handled at the
    same time: whichever lands last, the interaction ends `delivered`, with one event per change."""
    from sessions.interactions import InteractionStore

    ks, view, given, router = paired
    store = InteractionStore(world.redis, clock=world.clock)
    for n, order in enumerate([("sent", "delivered"), ("delivered", "sent")] * 5):
        route = await router.route_text(from_=CUSTOMER, to=given[CUSTOMER], message_sid=f"SMr{n}", body="hi")
        ki = str(route.interaction_sid)
        await asyncio.gather(
            *(store.update(ks, ki, outbound_status=s, outbound_resource_sid="SMout") for s in order)
        )
        row = await world.redis.hgetall(keys.interaction(ks, ki))
        assert row["outbound_resource_status"] == "delivered", order
        assert row["outbound_resource_sid"] == "SMout"
    # A call's duration merges into its data; the same callback again changes nothing.
    route = await router.route_call(from_=CUSTOMER, to=given[CUSTOMER], call_sid="CAr1")
    ki = str(route.interaction_sid)
    first = await store.update(ks, ki, outbound_status="completed", data={"duration": "42"})
    again = await store.update(ks, ki, outbound_status="completed", data={"duration": "42"})
    assert first is not None and again == first
    assert orjson.loads(first["data"]) == {"duration": "42"}
    assert await store.update(ks, "KI" + "0" * 32, outbound_status="delivered") is None


async def test_deleting_an_interaction_counts_and_logs_it_once(world: World, paired: Paired) -> None:
    """Deletes of the same interaction (API calls at the same time): one deletes it, the others
    find nothing; the session's count of interactions drops by one and the audit log hears of it
    once. (delete_interaction.lua does it in one step, so no interleaving can count it twice and
    no crash can drop the record without its event.)"""
    from sessions.interactions import InteractionStore

    ks, view, given, router = paired
    store = InteractionStore(world.redis, clock=world.clock)
    kept = await router.route_text(from_=CUSTOMER, to=given[CUSTOMER], message_sid="SMd1", body="hi")
    gone = await router.route_text(from_=COURIER, to=given[COURIER], message_sid="SMd2", body="yo")
    kc, ki = view["sid"], str(gone.interaction_sid)
    counted = int(await world.redis.hget(keys.session(ks, kc), "ix_count"))

    results = await asyncio.gather(*(store.delete(ks, kc, ki) for _ in range(8)))

    assert sorted(results) == [False] * 7 + [True]
    assert int(await world.redis.hget(keys.session(ks, kc), "ix_count")) == counted - 1
    assert not await world.redis.exists(keys.interaction(ks, ki))
    held = await store.held(ks, kc)
    assert held is not None and [row["sid"] for row in held] == [kept.interaction_sid]
    deleted = [
        orjson.loads(fields["data"])
        for _, fields in await world.redis.xrange(keys.events(ks))
        if fields["type"] == "interaction.deleted"
    ]
    assert deleted == [{"sid": ki, "session_sid": kc}]
    assert await store.delete(ks, "KC" + "0" * 32, str(kept.interaction_sid)) is False  # not its session


async def test_a_session_of_twelve_keeps_each_participant_in_its_place(world: World) -> None:
    """Participants 10 and up have two-digit places in the session's hash ({n}{code}): each reads
    back as itself, before and after one of the first nine leaves, and routes to the others."""
    ks = await world.service(options={"max_participants": 12})
    await world.pool(ks, "+14155550201", "+14155550202")
    people = [f"+1415555{300 + i:04d}" for i in range(12)]
    view = await world.session(ks, *people)
    listed = await world.sessions.list_participants(ks, view["sid"])
    assert [p["identifier"] for p in listed] == people and listed == view["participants"]
    await world.sessions.remove_participant(ks, view["sid"], listed[2]["sid"])
    kept = await world.sessions.list_participants(ks, view["sid"])
    assert kept == [p for p in listed if p["sid"] != listed[2]["sid"]]
    router = Router(world.redis, clock=world.clock)
    last = kept[-1]
    route = await router.route_text(
        from_=last["identifier"], to=last["proxy_identifier"], message_sid="SM12", body="hi"
    )
    assert route.outcome == "relay" and route.inbound["sid"] == last["sid"]
    assert sorted(part["identifier"] for part, _ in route.legs) == sorted(people[:2] + people[3:11])
