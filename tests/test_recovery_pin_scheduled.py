"""Redis loses its data: PIN-mode participants come back with their PIN, and scheduled messages come
back too: those due later on the due list, those whose time had come marked failed (store_lost),
never sent twice nor silently dropped (maskline/recovery.py, sessions/lua/restore_scheduled.lua)."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import redis.asyncio as aioredis
from relay_harness import COURIER, CUSTOMER, GUEST, HOST, PROXY_A, PROXY_B, PROXY_C, Relay, parse
from test_recovery import RECOVERY_BUDGET_S, _drain, _ready, _until, relay  # noqa: F401 - the fixture

from core import keys

FRIEND = "+12125550105"


async def _wipe_and_wait(relay: Relay, redis: aioredis.Redis, pg: asyncpg.Pool) -> None:  # noqa: F811
    await _drain(redis, pg)
    await redis.flushdb()  # the test DB only

    async def ready_again() -> bool:
        return (await _ready(relay))[0] == 200

    await _until(ready_again, within_s=RECOVERY_BUDGET_S, what="/readyz 200 again")


async def test_a_pin_session_comes_back_with_its_pin(
    relay: Relay,  # noqa: F811
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)
    await relay.update_service(ks, FallbackNumber=PROXY_C)
    for other in (COURIER, HOST):
        await relay.session(ks, CUSTOMER, other)
    third = await relay.session(ks, CUSTOMER, GUEST)
    assert third["proxy"][CUSTOMER] == PROXY_C
    kp = third["participants"][CUSTOMER]
    path = f"/v1/Services/{ks}/Sessions/{third['sid']}/Participants/{kp}"
    pin = (await relay.api("GET", path))[1]["pin"]
    # A fourth, in PIN mode too, closed before the wipe: its PIN pair cools off.
    fourth = await relay.session(ks, CUSTOMER, FRIEND)
    kp4 = fourth["participants"][CUSTOMER]
    old_pin = (await relay.api("GET", f"/v1/Services/{ks}/Sessions/{fourth['sid']}/Participants/{kp4}"))[1][
        "pin"
    ]
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{fourth['sid']}", {"Status": "closed"})
    assert status == 200

    await _wipe_and_wait(relay, redis, pg)

    assert (await relay.api("GET", path))[1]["pin"] == pin
    msg = parse((await relay.sms(CUSTOMER, PROXY_C, f"{pin} back again"))[1]).find("Message")
    assert msg is not None and msg.get("to") == GUEST and msg.text == "back again"
    assert await redis.pttl(keys.pair(ks, CUSTOMER, f"{PROXY_C}#{old_pin}")) > 0  # cooling again
    assert not await redis.exists(keys.pair(ks, CUSTOMER, PROXY_C))  # never as a plain pair
    # One live PIN session: a text without a PIN reaches it (the cooling one does not count).
    msg = parse((await relay.sms(CUSTOMER, PROXY_C, "no pin"))[1]).find("Message")
    assert msg is not None and msg.get("to") == GUEST


async def test_scheduled_messages_come_back_and_those_already_due_end_failed(
    relay: Relay,  # noqa: F811
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    kp = sess["participants"][CUSTOMER]
    create = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions"
    later = (
        await relay.api("POST", create, {"Body": "tomorrow at 10", "SendAt": f"{time.time() + 3600:.3f}"})
    )[1]
    soon = (await relay.api("POST", create, {"Body": "in a moment", "SendAt": f"{time.time() + 1.1:.3f}"}))[1]
    await asyncio.sleep(1.3)  # due now; no scheduler runs in this app: it never went out

    await _wipe_and_wait(relay, redis, pg)

    listed = f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages"
    found = {m["sid"]: m for m in (await relay.api("GET", listed))[1]["scheduled_messages"]}
    assert found[later["sid"]]["status"] == "scheduled" and found[later["sid"]]["body"] == "tomorrow at 10"
    assert found[soon["sid"]]["status"] == "failed" and found[soon["sid"]]["reason"] == "store_lost"
    assert await redis.zrange(keys.due(ks), 0, -1) == [later["sid"]]
    # Closing the session still cancels what it had scheduled.
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    assert status == 200
    status, again = await relay.api("GET", f"{listed}/{later['sid']}")
    assert again["status"] == "canceled"
