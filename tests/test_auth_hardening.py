"""API key logins under attack (relay/credentials.py, the auth middleware): the Basic scheme in any
case, malformed credentials are a plain 401, failed logins are limited (429, Twilio's 20429, with
Retry-After), the scrypt queue is bounded, unknown SIDs cost what wrong secrets cost, and verified
keys keep working while Postgres is down but not after their revocation once it is back."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from api_helpers import RunningApp, running_app

from relay.credentials import HashPool, KeyVerifier, create_key, revoke_key
from relay.login_limits import FailureLimiter, TooManyAttempts, failures_by_address_key, failures_by_sid_key
from relay.state import VERIFIER

UNKNOWN_SID = "SK" + "0" * 32


def _basic(user: str | bytes, password: str | bytes, scheme: str = "Basic") -> str:
    raw = (user.encode() if isinstance(user, str) else user) + b":"
    raw += password.encode() if isinstance(password, str) else password
    return f"{scheme} {base64.b64encode(raw).decode()}"


async def _get(api: RunningApp, path: str, authorization: str | None) -> tuple[int, Any, Any]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with api.http.get(api.base + path, headers=headers) as resp:
        body = await resp.json() if resp.content_type == "application/json" else await resp.text()
        return resp.status, body, resp.headers


def _count_hashes(api: RunningApp) -> list[int]:
    """Counts the scrypt jobs the app's verifier runs from now on."""
    hasher = api.app[VERIFIER].hasher
    real: Callable[[str, str], Awaitable[bool]] = hasher.matches
    calls = [0]

    async def counting(secret: str, stored: str) -> bool:
        calls[0] += 1
        return await real(secret, stored)

    hasher.matches = counting  # type: ignore[method-assign]
    return calls


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


@pytest.mark.parametrize("scheme", ["basic", "BASIC", "bAsIc"])
async def test_the_basic_scheme_is_accepted_in_any_case(api: RunningApp, scheme: str) -> None:
    status, body, _ = await _get(api, "/v1/Services", _basic(api.key_sid, api.key_secret, scheme))
    assert status == 200, body


@pytest.mark.parametrize(
    "authorization",
    [
        _basic("SK\x00", "x"),
        _basic("SK" + "0" * 31 + "\x00", "x"),
        _basic(b"SK\xff\xfe", "x"),  # not UTF-8
        _basic(UNKNOWN_SID, b"\xc3\x28"),  # not UTF-8
        _basic(UNKNOWN_SID, "se\x00cret"),
        _basic(UNKNOWN_SID, "tab\there"),
        _basic(UNKNOWN_SID, "x" * 257),
        _basic("SK" + "AB" * 16, "x"),  # upper-case hex
        _basic("SK" + "0" * 33, "x"),
        _basic("' OR 1=1 --", "x"),
        _basic("", ""),
        "Basic !!!not-base64!!!",
        "Basic",
        "Bearer abc",
    ],
)
async def test_malformed_credentials_are_a_401_and_never_reach_postgres(
    api: RunningApp, pg: asyncpg.Pool, database_url: str, authorization: str
) -> None:
    # The verifier's pool is closed: a lookup would answer 503, so a 401 shows none was made.
    closed = await asyncpg.create_pool(database_url, min_size=0, max_size=1)
    await closed.close()
    api.app[VERIFIER].pg = closed
    status, body, headers = await _get(api, "/v1/Services", authorization)
    assert status == 401, body
    assert body["code"] == 20003 and headers["WWW-Authenticate"].startswith("Basic")


async def test_the_21st_failed_login_from_one_address_gets_a_429(
    api: RunningApp, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    assert (await _get(api, "/v1/Services", _basic(api.key_sid, api.key_secret)))[0] == 200
    hashes = _count_hashes(api)
    for attempt in range(20):
        sid = api.key_sid if attempt % 2 else UNKNOWN_SID
        status, body, _ = await _get(api, "/v1/Services", _basic(sid, f"wrong-{attempt}"))
        assert (status, body["code"]) == (401, 20003), attempt
    assert hashes[0] == 20
    status, body, headers = await _get(api, "/v1/Services", _basic(api.key_sid, "wrong-again"))
    assert status == 429
    assert body == {
        "code": 20429,
        "message": body["message"],
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }
    assert body["message"]
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert 0 < await redis.ttl(failures_by_address_key("127.0.0.1")) <= 60
    assert hashes[0] == 20  # a limited login runs no scrypt
    # Another key, never verified in this worker: the address is limited, so 429 as well.
    other_sid, other_secret = await create_key(pg, "other")
    assert (await _get(api, "/v1/Services", _basic(other_sid, other_secret)))[0] == 429
    assert hashes[0] == 20
    # The key verified before the attack is answered from memory (no scrypt): not locked out.
    assert (await _get(api, "/v1/Services", _basic(api.key_sid, api.key_secret)))[0] == 200


async def test_failed_logins_are_limited_per_key_sid_across_addresses(
    api: RunningApp, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    verifier = api.app[VERIFIER]
    sid, secret = await create_key(pg, "target")
    for i in range(20):
        assert await verifier.authenticate(_basic(sid, f"guess-{i}"), f"10.0.0.{i}") is None
    with pytest.raises(TooManyAttempts) as refused:
        await verifier.authenticate(_basic(sid, secret), "10.0.1.1")
    assert 1 <= refused.value.retry_after_s <= 60
    assert int(await redis.get(failures_by_sid_key(sid))) == 20
    # Another SID from a fresh address is not affected.
    assert await verifier.authenticate(_basic(api.key_sid, api.key_secret), "10.0.1.2") is not None


async def test_the_limiter_fails_open_when_redis_is_down(
    pg: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    dead = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    verifier = KeyVerifier(pg, limiter=FailureLimiter(dead, limit=1, window_s=60))
    try:
        sid, secret = await create_key(pg, "fail-open")
        with caplog.at_level(logging.WARNING, logger="maskline.auth"):
            for _ in range(3):
                assert await verifier.authenticate(_basic(sid, "wrong"), "10.9.9.9") is None
            assert await verifier.authenticate(_basic(sid, secret), "10.9.9.9") is not None
        assert len([r for r in caplog.records if "limiter" in r.getMessage()]) == 1  # logged once
    finally:
        verifier.close()
        await dead.aclose()


async def test_a_full_hash_queue_answers_429_not_a_wait(settings, redis, pg) -> None:
    settings = dataclasses.replace(settings, auth_hash_queue=2, auth_failure_limit=0)
    async with running_app(settings, redis, pg) as api:
        attempts = [_get(api, "/v1/Services", _basic(UNKNOWN_SID, f"w{i}")) for i in range(8)]
        answers = await asyncio.gather(*attempts)
        statuses = sorted(status for status, _, _ in answers)
        assert set(statuses) == {401, 429} and statuses.count(401) >= 2, statuses
        busy = [(body, headers) for status, body, headers in answers if status == 429]
        assert all(body["code"] == 20429 and headers["Retry-After"] == "1" for body, headers in busy)
    pool = HashPool(workers=1, queue=1)
    try:
        first = asyncio.ensure_future(pool.matches("a", "scrypt$00$00"))
        await asyncio.sleep(0)
        with pytest.raises(TooManyAttempts):
            await pool.matches("b", "scrypt$00$00")
        assert await first is False
        assert await pool.matches("c", "scrypt$00$00") is False  # the slot is free again
    finally:
        pool.close()


async def test_a_verified_key_keeps_working_while_postgres_is_down_and_revocation_holds_after(
    settings, redis, pg: asyncpg.Pool, database_url: str
) -> None:
    settings = dataclasses.replace(settings, auth_key_fresh_s=0.0)  # every call refreshes the key
    own = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        async with running_app(settings, redis, own) as api:
            status, svc = await api.call("POST", "/v1/Services", {"UniqueName": "outage"})
            assert status == 201
            sessions = f"/v1/Services/{svc['sid']}/Sessions"
            await own.close()  # Postgres unreachable for this app from now on
            for _ in range(3):
                status, body = await api.call("GET", sessions)  # Redis only
                assert status == 200, body
            # Another secret, or a key never verified here, cannot be checked: 503, not 401.
            assert (await _get(api, sessions, _basic(api.key_sid, "wrong")))[0] == 503
            assert (await _get(api, sessions, _basic(UNKNOWN_SID, "x")))[0] == 503
            api.app[VERIFIER].pg = pg  # Postgres is back
            assert (await api.call("GET", sessions))[0] == 200
            assert await revoke_key(pg, api.key_sid)
            status, body = await api.call("GET", sessions)
            assert (status, body["code"]) == (401, 20003)
    finally:
        await own.close()


async def test_a_revoked_key_stops_working_once_its_freshness_ends(settings, redis, pg) -> None:
    settings = dataclasses.replace(settings, auth_key_fresh_s=0.3)
    async with running_app(settings, redis, pg) as api:
        assert (await api.call("GET", "/v1/Services"))[0] == 200
        assert await revoke_key(pg, api.key_sid)
        assert (await api.call("GET", "/v1/Services"))[0] == 200  # still fresh in this worker
        await asyncio.sleep(0.35)
        assert (await api.call("GET", "/v1/Services"))[0] == 401


async def test_unknown_sids_take_as_long_as_wrong_secrets(settings, redis, pg) -> None:
    """Loose (not a benchmark): both refusals run one Postgres look-up and one scrypt."""
    settings = dataclasses.replace(settings, auth_failure_limit=0)
    async with running_app(settings, redis, pg) as api:

        async def timed(authorization: str) -> float:
            start = time.perf_counter()
            status, _, _ = await _get(api, "/v1/Services", authorization)
            assert status == 401
            return time.perf_counter() - start

        await timed(_basic(UNKNOWN_SID, "warm-up"))
        unknown, wrong = [], []
        for i in range(15):  # alternated, so the machine's noise hits both alike
            unknown.append(await timed(_basic("SK" + f"{i:032x}", "guess")))
            wrong.append(await timed(_basic(api.key_sid, f"guess-{i}")))
        a, b = statistics.median(unknown), statistics.median(wrong)
        assert max(a, b) / min(a, b) <= 1.5, (a, b)


async def test_no_authorization_header_is_not_counted(api: RunningApp, redis: aioredis.Redis) -> None:
    for _ in range(25):
        assert (await _get(api, "/v1/Services", None))[0] == 401
    assert await redis.get(failures_by_address_key("127.0.0.1")) is None
    assert (await api.call("GET", "/v1/Services"))[0] == 200
