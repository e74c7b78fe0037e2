"""Session lifecycle: the status machine, TTL and DateExpiry, the sweeper and the cool-off.
Time moves with a ManualClock, never with sleeps."""

from __future__ import annotations

import asyncio

import pytest
from pool_helpers import COURIER, CUSTOMER, GUEST, HOST, World, proxies

from core import keys
from core.errors import PoolError
from core.paging import PageRequest
from core.settings import Settings
from sessions.expiry import sweep_once
from sessions.models import ParticipantRequest, Status
from sessions.routing import Router

POOL = ["+14155550201", "+14155550202"]


@pytest.fixture
async def world(pg, redis) -> World:
    return World(pg, redis)


async def _text(world: World, frm: str, to: str, sid: str) -> str:
    route = await Router(world.redis, clock=world.clock).route_text(
        from_=frm, to=to, message_sid=sid, body="hello"
    )
    return route.outcome


async def test_first_interaction_moves_open_to_in_progress(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    assert view["status"] == "open"
    await _text(world, CUSTOMER, proxies(view)[CUSTOMER], "SM1")
    assert (await world.sessions.get_session(ks, view["sid"]))["status"] == "in-progress"


async def test_close_then_update_is_80607_and_other_transitions_80608(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    with pytest.raises(PoolError) as err:
        await world.sessions.update_session(ks, view["sid"], status=Status.FAILED)
    assert err.value.code == 80608
    closed = await world.sessions.close_session(ks, view["sid"])
    assert (closed["status"], closed["closed_reason"]) == ("closed", "api")
    with pytest.raises(PoolError) as err:
        await world.sessions.update_session(ks, view["sid"], ttl_s=600)
    assert err.value.code == 80607


async def test_closed_session_reopens_while_its_pairs_are_free(world: World) -> None:
    ks = await world.service(cool_off_s=3600)
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    await world.sessions.close_session(ks, view["sid"])
    reopened = await world.sessions.update_session(ks, view["sid"], status=Status.IN_PROGRESS)
    assert reopened["status"] == "in-progress" and not reopened["closed_reason"]
    assert await _text(world, CUSTOMER, proxies(view)[CUSTOMER], "SM2") == "relay"
    for n in POOL:
        assert (await world.numbers.get(ks, n))["in_use"] == sum(1 for p in proxies(view).values() if p == n)


async def test_reopen_fails_with_80604_when_a_pair_was_taken_meanwhile(world: World) -> None:
    ks = await world.service(cool_off_s=0)
    await world.pool(ks, POOL[0])
    view = await world.session(ks, CUSTOMER, COURIER)
    await world.sessions.close_session(ks, view["sid"])
    await world.session(ks, CUSTOMER, HOST)  # no cool-off: CUSTOMER's pair goes to a new session
    with pytest.raises(PoolError) as err:
        await world.sessions.update_session(ks, view["sid"], status=Status.IN_PROGRESS)
    assert err.value.code == 80604


async def test_ttl_counts_from_the_last_interaction_and_sweeper_closes(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER, ttl_s=600)
    world.clock.advance(500)
    await _text(world, CUSTOMER, proxies(view)[CUSTOMER], "SM3")  # TTL restarts here
    world.clock.advance(500)
    assert await sweep_once(world.sessions) == 0
    assert (await world.sessions.get_session(ks, view["sid"]))["status"] == "in-progress"
    world.clock.advance(101)
    assert await sweep_once(world.sessions) == 1
    closed = await world.sessions.get_session(ks, view["sid"])
    assert (closed["status"], closed["closed_reason"]) == ("closed", "ttl")


async def test_service_default_ttl_applies_and_zero_means_none(world: World) -> None:
    ks = await world.service(default_ttl_s=60)
    forever = await world.service(default_ttl_s=0)
    await world.pool(ks, POOL[0])
    await world.pool(forever, POOL[1])
    a = await world.session(ks, CUSTOMER)
    b = await world.session(forever, CUSTOMER)
    world.clock.advance(86400 * 30)
    assert await sweep_once(world.sessions) == 1
    assert (await world.sessions.get_session(ks, a["sid"]))["status"] == "closed"
    assert (await world.sessions.get_session(forever, b["sid"]))["status"] == "open"


async def test_date_expiry_overrides_ttl(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER, ttl_s=3600, date_expiry_ms=world.clock.ms + 120_000)
    world.clock.advance(121)
    assert await sweep_once(world.sessions) == 1
    assert (await world.sessions.get_session(ks, view["sid"]))["closed_reason"] == "expiry"


async def test_concurrent_sweepers_close_each_session_once(world: World) -> None:
    ks = await world.service(default_ttl_s=10)
    await world.pool(ks, *POOL)
    for i in range(100):
        await world.session(ks, f"+1212555{6000 + i:04d}")
    world.clock.advance(11)
    closed = await asyncio.gather(*(sweep_once(world.sessions) for _ in range(8)))
    assert sum(closed) == 100
    events = await world.redis.xrange(keys.events(ks))
    assert sum(1 for _, e in events if e["type"] == "session.closed") == 100
    assert [(await world.numbers.get(ks, n))["in_use"] for n in POOL] == [0, 0]


async def test_cool_off_holds_the_pair_then_releases_it(world: World) -> None:
    ks = await world.service(cool_off_s=4 * 3600)
    await world.pool(ks, POOL[0])
    view = await world.session(ks, CUSTOMER, COURIER)
    await world.sessions.close_session(ks, view["sid"])
    # A late caller redials from their log: out of session, never a stranger.
    assert await _text(world, CUSTOMER, POOL[0], "SM4") == "no_session"
    with pytest.raises(PoolError) as err:  # the pair is not handed to a new session while cooling
        await world.session(ks, CUSTOMER, HOST)
    assert err.value.code == 80208
    # Other participants are not held back by CUSTOMER's cool-off.
    assert proxies(await world.session(ks, HOST, GUEST))[HOST] == POOL[0]
    # Cool-off is a Redis expiry on the pair; fast-forward it rather than sleep 4 hours.
    pair = keys.pair(ks, CUSTOMER, POOL[0])
    assert 0 < await world.redis.pttl(pair) <= 4 * 3600 * 1000
    await world.redis.pexpire(pair, 1)
    await asyncio.sleep(0.01)
    later = await world.session(ks, CUSTOMER, "+12125550199")
    assert proxies(later)[CUSTOMER] == POOL[0]


async def test_unique_name_conflict_never_creates_a_second_session(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    await world.session(ks, CUSTOMER, COURIER, unique_name="order-42")
    results = await asyncio.gather(
        *(world.session(ks, f"+1212555{7000 + i:04d}", unique_name="order-42") for i in range(10)),
        return_exceptions=True,
    )
    assert all(isinstance(r, PoolError) and r.code == 80603 and r.status == 409 for r in results)
    assert len((await world.sessions.list_sessions(ks, PageRequest(size=50))).items) == 1


async def test_deleted_session_pairs_still_cool_off(world: World) -> None:
    ks = await world.service(cool_off_s=3600)
    await world.pool(ks, POOL[0])
    view = await world.session(ks, CUSTOMER, COURIER)
    await world.sessions.delete_session(ks, view["sid"])
    assert await _text(world, COURIER, POOL[0], "SM5") == "no_session"
    with pytest.raises(PoolError):
        await world.session(ks, COURIER, HOST)
    assert (await world.numbers.get(ks, POOL[0]))["in_use"] == 0


async def test_participants_added_one_by_one_and_removed(world: World) -> None:
    from sessions.models import ParticipantRequest

    ks = await world.service(cool_off_s=0)
    await world.pool(ks, *POOL)
    view = await world.session(ks)
    a = await world.sessions.add_participant(ks, view["sid"], ParticipantRequest(CUSTOMER, "Ann"))
    await world.sessions.add_participant(ks, view["sid"], ParticipantRequest(COURIER))
    with pytest.raises(PoolError) as err:
        await world.sessions.add_participant(ks, view["sid"], ParticipantRequest(HOST))
    assert err.value.code == 80609
    assert [p["friendly_name"] for p in await world.sessions.list_participants(ks, view["sid"])] == [
        "Ann",
        "",
    ]
    await world.sessions.remove_participant(ks, view["sid"], a["sid"])
    assert len(await world.sessions.list_participants(ks, view["sid"])) == 1
    assert await _text(world, CUSTOMER, a["proxy_identifier"], "SM6") == "no_session"


async def test_closed_session_records_expire_after_retention_and_reopen_keeps_them(world: World) -> None:
    ks = await world.service(cool_off_s=60)
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    await _text(world, CUSTOMER, proxies(view)[CUSTOMER], "SM7")
    ix_sids = await world.redis.zrange(keys.session_interactions(ks, view["sid"]), 0, -1)
    assert len(ix_sids) == 1
    await world.sessions.close_session(ks, view["sid"])
    held = [keys.session(ks, view["sid"])]  # (its participants are fields of it)
    # Closed: kept for the retention period (7 days by default), then Redis forgets them; the
    # interaction keeps its own, shorter hot window (then the audit log has it).
    ttls = [await world.redis.pttl(k) for k in held]
    assert all(0 < t <= 7 * 86400 * 1000 for t in ttls), ttls
    hot_ms = Settings.interaction_hot_s * 1000
    assert 0 < await world.redis.pttl(keys.interaction(ks, ix_sids[0])) <= hot_ms
    await world.sessions.update_session(ks, view["sid"], status=Status.IN_PROGRESS)
    assert [await world.redis.pttl(k) for k in held] == [-1] * len(held)
    assert 0 < await world.redis.pttl(keys.interaction(ks, ix_sids[0])) <= hot_ms
    assert await world.sessions.list_participants(ks, view["sid"]) == view["participants"]


async def test_sweeper_prunes_sessions_redis_has_forgotten_from_the_listing(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *POOL)
    gone = await world.session(ks, CUSTOMER)
    kept = await world.session(ks, COURIER)
    await world.redis.delete(keys.session(ks, gone["sid"]))  # as when its retention ends
    await sweep_once(world.sessions)
    assert await world.redis.zrange(keys.sessions_by_created(ks), 0, -1) == [kept["sid"]]


async def test_a_closed_session_keeps_its_participants_pn_sids_when_their_numbers_leave_the_pool(
    world: World,
) -> None:
    """A live session reads its participants' PN sids from the pool (a number in use cannot leave
    it); closing writes them into the session, and removing a participant into its own hash, so
    they stay right once the numbers are gone."""
    ks = await world.service()
    await world.pool(ks, *POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    before = await world.sessions.list_participants(ks, view["sid"])
    assert [p["proxy_identifier_sid"] for p in before] == [
        p["proxy_identifier_sid"] for p in view["participants"]
    ]
    await world.sessions.close_session(ks, view["sid"])
    for pn in {p["proxy_identifier_sid"] for p in before}:
        await world.numbers.remove(ks, pn)
    after = await world.sessions.list_participants(ks, view["sid"])
    assert [p["proxy_identifier_sid"] for p in after] == [p["proxy_identifier_sid"] for p in before]
    kp = before[0]["sid"]
    got = await world.sessions.get_participant(ks, view["sid"], kp)
    assert got["proxy_identifier_sid"] == before[0]["proxy_identifier_sid"]
    # A participant removed from a live session keeps its PN sid in its own hash alike.
    more = ["+14155550203", "+14155550204"]
    await world.pool(ks, *more)
    live = await world.sessions.create_session(
        ks,
        participants=[
            ParticipantRequest(identifier=HOST, proxy_identifier=more[0]),
            ParticipantRequest(identifier=GUEST, proxy_identifier=more[1]),
        ],
    )
    host = live["participants"][0]
    await world.sessions.remove_participant(ks, live["sid"], host["sid"])
    await world.numbers.remove(ks, host["proxy_identifier_sid"])
    removed = await world.sessions.get_participant(ks, live["sid"], host["sid"])
    assert removed["proxy_identifier_sid"] == host["proxy_identifier_sid"] and removed["deleted_ms"]
