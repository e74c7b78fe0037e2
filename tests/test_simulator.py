"""The sandbox's simulated Twilio without a browser: what it does with Maskline's TwiML
(<Dial timeLimit>, STOP)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from core.settings import Settings
from maskline.dev import DEMO_PHONES, Sandbox

CUSTOMER, COURIER = DEMO_PHONES


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_call_time_limit_hangs_up_and_stop_gets_its_reply(
    settings: Settings, redis: aioredis.Redis, pg: asyncpg.Pool
) -> None:
    box = await Sandbox.start(settings, phones_port=_free_port(), redis=redis, pg=pg, background=False)
    try:
        sid, secret = box.api_key or ("", "")
        auth = {"Authorization": aiohttp.encode_basic_auth(sid, secret)}
        async with aiohttp.ClientSession(headers=auth) as http:
            url = f"{box.settings.public_url}/v1/Services/{box.service_sid}"
            async with http.post(url, data={"CallTimeLimit": "1"}) as r:
                assert r.status == 200
        sim = box.simulator
        call = await sim.call(COURIER, box.proxies[COURIER])
        assert call.ringing == CUSTOMER and call.time_limit_s == 1
        await sim.answer(call.sid)
        await asyncio.sleep(1.3)
        assert call.sid not in sim.calls and call.status == "completed"
        notes = [e.get("text", "") for e in sim.phones[COURIER] if e["kind"] == "notice"]
        assert any("time limit" in n for n in notes)

        # STOP is never relayed (Twilio's carrier-level reply is Twilio's own); afterwards the
        # courier's texts do not reach the customer.
        await sim.text(CUSTOMER, box.proxies[CUSTOMER], "STOP")
        assert sim.phones[CUSTOMER][-1]["kind"] == "notice"
        assert not [e for e in sim.phones[COURIER] if e.get("body") == "STOP"]
        await sim.text(COURIER, box.proxies[COURIER], "are you there?")
        assert not [e for e in sim.phones[CUSTOMER] if e.get("body") == "are you there?"]
    finally:
        await box.stop()
