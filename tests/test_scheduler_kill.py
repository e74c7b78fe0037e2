"""kill -9 of the `maskline serve` process that holds the scheduler's lease while scheduled
messages fall due: another process takes the duty over, and no message is sent twice or skipped.

Two real processes share one (private) Redis and the Postgres; Twilio is the fake, in this
process, with its request log. Every message has a body of its own, so the log shows duplicates."""

from __future__ import annotations

import asyncio
import base64
import signal
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from fake_twilio import FakeTwilio
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B
from test_fault_kill import Serve, _free_port, serve_env

from core.lease import lease_key
from relay.credentials import create_key

MESSAGES = 200
FIRST_DUE_S, SPREAD_S = 3.0, 4.0  # due from 3 s to 7 s after scheduling
KILL_AT_S = 4.5  # the holder dies with about a third of them still to send
LEASE_TTL_S = 1.0
CLAIM_S = 3.0  # a send to the fake Twilio takes milliseconds


async def test_kill_9_of_the_scheduler_holder_loses_and_duplicates_nothing(
    settings, pg, private_redis
) -> None:
    server, r = private_redis
    fake = await FakeTwilio(account_sid=settings.twilio_account_sid).start()
    env = serve_env(
        settings,
        server.url,
        MASKLINE_TWILIO_API_URL=fake.url,
        MASKLINE_LEASE_TTL_S=str(LEASE_TTL_S),
        MASKLINE_SCHEDULE_CLAIM_S=str(CLAIM_S),
        MASKLINE_WORKERS="1",
    )
    first, second = Serve(env, _free_port()), Serve(env, _free_port())
    try:
        await first.start()
        while not await r.get(lease_key("scheduler")):  # noqa: ASYNC110 - the first holds it
            await asyncio.sleep(0.05)
        await second.start()
        key_sid, secret = await create_key(pg, "scheduler kill test")
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key_sid}:{secret}".encode()).decode()}
        base = f"http://127.0.0.1:{second.port}"
        async with aiohttp.ClientSession(headers=auth) as http:

            async def api(method: str, path: str, data: Any = None) -> Any:
                async with http.request(method, base + path, data=data) as resp:
                    assert resp.status in (200, 201), await resp.text()
                    return await resp.json()

            ks = (await api("POST", "/v1/Services", {"UniqueName": "scheduler-kill"}))["sid"]
            for number in (PROXY_A, PROXY_B):
                await api("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": number})
            form = [("Participants", orjson.dumps({"Identifier": n}).decode()) for n in (CUSTOMER, COURIER)]
            kc = (await api("POST", f"/v1/Services/{ks}/Sessions", form))["sid"]
            parts = (await api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Participants"))["participants"]
            start = time.time()
            for i in range(MESSAGES):
                kp = parts[i % 2]["sid"]
                at = start + FIRST_DUE_S + SPREAD_S * i / MESSAGES
                path = f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions"
                await api("POST", path, {"Body": f"reminder {i}", "SendAt": f"{at:.3f}"})

            await asyncio.sleep(max(0.0, start + KILL_AT_S - time.time()))
            holder = str(await r.get(lease_key("scheduler")))
            victim = first if holder.split(":")[1] == str(first.process.pid) else second  # type: ignore[union-attr]
            sent_before = len(fake.messages)
            victim.kill(signal.SIGKILL)
            survivor = second if victim is first else first
            base = f"http://127.0.0.1:{survivor.port}"

            # Everything due is settled within the lease's expiry and a few rounds.
            deadline = start + FIRST_DUE_S + SPREAD_S + 15
            statuses: Counter[str] = Counter()
            rows: list[dict[str, Any]] = []
            while time.time() < deadline:
                rows = (await api("GET", f"/v1/Services/{ks}/Sessions/{kc}/ScheduledMessages?PageSize=1000"))[
                    "scheduled_messages"
                ]
                statuses = Counter(row["status"] for row in rows)
                if statuses["scheduled"] == 0 and statuses["sending"] == 0:
                    break
                await asyncio.sleep(0.2)

        bodies = Counter(m.get("Body") for m in fake.messages)
        print(f"\nkilled at {sent_before} sent; statuses {dict(statuses)}; {len(bodies)} bodies at Twilio")
        assert 0 < sent_before < MESSAGES, "the kill should fall while messages are going out"
        assert len(rows) == MESSAGES
        assert [b for b, n in bodies.items() if n > 1] == [], "a message went to Twilio twice"
        assert statuses["scheduled"] == 0 and statuses["sending"] == 0, "a message was skipped"
        # Sent ones are at Twilio; the only failures are claims the dead process held (sender_died).
        sent = {row["body"] for row in rows if row["status"] == "sent"}
        assert sent <= set(bodies)
        failed = [row for row in rows if row["status"] == "failed"]
        assert all(row["reason"] == "sender_died" for row in failed)
        assert statuses["sent"] + len(failed) == MESSAGES
        assert len(failed) <= 32  # at most the claims in flight in the dead process
    finally:
        for serve in (first, second):
            if serve.process is not None and serve.process.poll() is None:
                serve.kill(signal.SIGTERM)
        await fake.stop()
