"""The pool's invariant and selection rules, on real Redis and Postgres."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from pool_helpers import COURIER, CUSTOMER, GUEST, HOST, UK_GUEST, World, proxies

from core import keys
from core.connections import redis_client
from core.errors import PoolError
from core.paging import PageRequest
from sessions.models import ParticipantRequest
from sessions.store import SessionStore

US_POOL = ["+14155550201", "+14155550202", "+14155550203", "+12125550204"]


@pytest.fixture
async def world(pg, redis) -> World:
    return World(pg, redis)


async def test_each_participant_gets_a_proxy_number_from_the_pool(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *US_POOL)
    view = await world.session(ks, CUSTOMER, COURIER)
    given = proxies(view)
    assert set(given) == {CUSTOMER, COURIER}
    assert set(given.values()) <= set(US_POOL)
    assert view["status"] == "open"


async def test_one_proxy_number_serves_many_sessions_of_different_participants(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, US_POOL[0])
    a = await world.session(ks, CUSTOMER, COURIER)
    b = await world.session(ks, HOST, GUEST)
    assert set(proxies(a).values()) == set(proxies(b).values()) == {US_POOL[0]}
    assert (await world.numbers.get(ks, US_POOL[0]))["in_use"] == 4


async def test_concurrent_creates_for_one_participant_never_duplicate_a_pair(
    world: World, redis_url: str
) -> None:
    # 1,000 creates in flight on 50 connections: Redis runs them interleaved, as under real load.
    busy = redis_client(redis_url, max_connections=50, timeout_s=30)
    world.sessions = SessionStore(busy, clock=world.clock)
    ks = await world.service()
    pool = [f"+1415555{n:04d}" for n in range(300, 340)]  # 40 numbers
    await world.pool(ks, *pool)
    others = [f"+1212555{n:04d}" for n in range(1000, 2000)]

    async def create(other: str) -> str | None:
        try:
            view = await world.session(ks, CUSTOMER, other)
        except PoolError as err:
            return f"error {err.code}"
        return proxies(view)[CUSTOMER]

    try:
        results = await asyncio.gather(*(create(o) for o in others))
    finally:
        await busy.aclose()
    given = [r for r in results if r and not r.startswith("error")]
    errors = Counter(r for r in results if r and r.startswith("error"))
    # The customer can hold each number once: 40 sessions, the other 960 get the precise code.
    assert len(given) == 40 == len(set(given))
    assert errors == {"error 80208": 960}
    # Nothing leaked: each number carries exactly the sessions that hold it.
    for n in pool:
        row = await world.numbers.get(ks, n)
        assert row["in_use"] == sum(1 for r in results if r == n) + sum(
            1 for o, r in zip(others, results, strict=True) if r == n
        )


async def test_failed_create_writes_nothing(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, US_POOL[0])
    await world.session(ks, CUSTOMER, COURIER)
    with pytest.raises(PoolError) as err:
        await world.session(ks, HOST, CUSTOMER)  # CUSTOMER already holds the only number
    assert err.value.code == 80208
    assert await world.redis.get(keys.pair(ks, HOST, US_POOL[0])) is None
    assert (await world.numbers.get(ks, US_POOL[0]))["in_use"] == 2
    assert len((await world.sessions.list_sessions(ks, PageRequest(size=10))).items) == 1


async def test_participant_gets_a_number_of_their_own_country(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, "+447400123458", US_POOL[0])
    view = await world.session(ks, UK_GUEST, HOST)
    assert proxies(view) == {UK_GUEST: "+447400123458", HOST: US_POOL[0]}


async def test_no_number_for_the_participants_country_is_80203(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, US_POOL[0])
    with pytest.raises(PoolError) as err:
        await world.session(ks, UK_GUEST)
    assert err.value.code == 80203
    assert "GB" in err.value.message


async def test_area_code_match_or_80206(world: World) -> None:
    ks = await world.service(geo_match_level="area-code")
    await world.pool(ks, "+14155550201", "+12125550204")
    view = await world.session(ks, CUSTOMER, HOST)
    assert proxies(view) == {CUSTOMER: "+14155550201", HOST: "+12125550204"}
    with pytest.raises(PoolError) as err:
        await world.session(ks, "+13125550199")  # Chicago: no 312 number
    assert err.value.code == 80206


async def test_reserved_numbers_are_only_given_when_named(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, US_POOL[0], reserved=True)
    with pytest.raises(PoolError) as err:
        await world.session(ks, CUSTOMER)
    assert err.value.code == 80207
    view = await world.sessions.create_session(
        ks, participants=[ParticipantRequest(identifier=CUSTOMER, proxy_identifier=US_POOL[0])]
    )
    assert proxies(view) == {CUSTOMER: US_POOL[0]}
    assert (await world.numbers.get(ks, US_POOL[0]))["in_use"] == 1


async def test_named_proxy_number_already_paired_is_80604(world: World) -> None:
    ks = await world.service()
    await world.pool(ks, *US_POOL)
    first = await world.session(ks, CUSTOMER, COURIER)
    taken = proxies(first)[CUSTOMER]
    with pytest.raises(PoolError) as err:
        await world.sessions.create_session(
            ks, participants=[ParticipantRequest(identifier=CUSTOMER, proxy_identifier=taken)]
        )
    assert err.value.code == 80604
    with pytest.raises(PoolError) as err:
        await world.sessions.create_session(
            ks, participants=[ParticipantRequest(identifier=CUSTOMER, proxy_identifier="+13125550100")]
        )
    assert err.value.code == 80605


async def test_least_used_number_is_chosen_first(world: World) -> None:
    ks = await world.service(number_selection_behavior="avoid-sticky")
    await world.pool(ks, *US_POOL)
    people = [f"+1212555{n:04d}" for n in range(3000, 3040)]
    for person in people:
        await world.session(ks, person)
    loads = [(await world.numbers.get(ks, n))["in_use"] for n in US_POOL]
    assert loads == [10, 10, 10, 10]


async def test_prefer_sticky_gives_back_the_previous_number(world: World) -> None:
    ks = await world.service(number_selection_behavior="prefer-sticky", cool_off_s=0)
    await world.pool(ks, *US_POOL)
    first = await world.session(ks, CUSTOMER)
    await world.sessions.close_session(ks, first["sid"])
    for person in (HOST, GUEST, COURIER):  # load the other numbers so least-used would differ
        await world.session(ks, person)
    again = await world.session(ks, CUSTOMER)
    assert proxies(again)[CUSTOMER] == proxies(first)[CUSTOMER]


async def test_sticky_hints_are_fields_of_one_hash_per_period_read_across_its_end(world: World) -> None:
    """The last number given to each participant is a field of the period's `last:` hash (a third of
    the memory of a key each), which expires at the end of the next period: a hint given just
    before a period ends is still read after it."""
    ks = await world.service(number_selection_behavior="prefer-sticky", cool_off_s=0)
    await world.pool(ks, *US_POOL)
    first = await world.session(ks, CUSTOMER)
    await world.sessions.close_session(ks, first["sid"])
    (now_s, _) = await world.redis.time()
    period = now_s // 2_592_000
    current = keys.last_proxy(ks, period)
    assert await world.redis.hgetall(current) == {CUSTOMER: proxies(first)[CUSTOMER]}
    assert (period + 1) * 2_592_000 < now_s + await world.redis.ttl(current) <= (period + 2) * 2_592_000
    # The period ends: its hash is now the previous one's.
    await world.redis.rename(current, keys.last_proxy(ks, period - 1))
    for person in (HOST, GUEST, COURIER):  # load the other numbers so least-used would differ
        await world.session(ks, person)
    again = await world.session(ks, CUSTOMER)
    assert proxies(again)[CUSTOMER] == proxies(first)[CUSTOMER]


async def test_avoid_sticky_spreads_to_another_number(world: World) -> None:
    ks = await world.service(number_selection_behavior="avoid-sticky", cool_off_s=0)
    await world.pool(ks, *US_POOL[:2])
    first = await world.session(ks, CUSTOMER)
    await world.sessions.close_session(ks, first["sid"])
    again = await world.session(ks, CUSTOMER)
    assert proxies(again)[CUSTOMER] != proxies(first)[CUSTOMER]


async def test_heavy_participant_still_gets_free_numbers(world: World) -> None:
    """A courier in many live sessions holds many numbers; sampling still finds a free one."""
    ks = await world.service()
    pool = [f"+1415555{n:04d}" for n in range(4000, 4100)]
    await world.pool(ks, *pool)
    held = set()
    for n in range(99):
        view = await world.session(ks, COURIER, f"+1212555{n + 5000:04d}")
        held.add(proxies(view)[COURIER])
    assert len(held) == 99
    last = await world.session(ks, COURIER)
    assert proxies(last)[COURIER] not in held
    with pytest.raises(PoolError) as err:
        await world.session(ks, COURIER)
    assert err.value.code == 80208


async def test_allowed_countries_refuse_other_countries(world: World) -> None:
    ks = await world.service(allowed_countries=["US"])
    await world.pool(ks, US_POOL[0], "+447400123458")
    with pytest.raises(PoolError) as err:
        await world.session(ks, UK_GUEST)
    assert err.value.code == 89002
    assert "GB" in err.value.message


async def test_number_with_live_sessions_cannot_leave_the_pool(world: World) -> None:
    ks = await world.service(cool_off_s=0)
    await world.pool(ks, US_POOL[0])
    view = await world.session(ks, CUSTOMER)
    row = await world.numbers.get(ks, US_POOL[0])
    with pytest.raises(PoolError) as err:
        await world.numbers.remove(ks, row["sid"])
    assert err.value.code == 80611
    await world.sessions.close_session(ks, view["sid"])
    await world.numbers.remove(ks, row["sid"])
    with pytest.raises(PoolError) as err:
        await world.session(ks, CUSTOMER)
    assert err.value.code == 80203
