"""A bad day in production: Redis stalls (SIGSTOP) under texts and session creates.

What must hold: nothing answered "failed" changed anything (no session created after a 503, no
pair leaked), no text answered with fallback TwiML is on record as relayed, every text is on
record (relayed or not relayed), and the relay works again within 2 s of Redis waking up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import time
from collections import Counter
from typing import Any

import orjson
import redis.asyncio as aioredis
from _audit_fixtures import final_outcomes, paced
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay, parse

from audit.writer import AuditWriter
from core import keys
from relay.state import RELAY

TEXTS_PER_S = 50
CREATES_PER_S = 5
# The stall outlasts the API's 4 s deadline; MASKLINE_FAULT_STALL_S=12 is the measurement.
BEFORE_S, STALL_S, AFTER_S = 1.5, float(os.environ.get("MASKLINE_FAULT_STALL_S", "6")), 1.5


def _relayed(xml: str) -> bool:
    message = parse(xml).find("Message")
    return message is not None and message.get("to") is not None


async def _drain_audit(redis: aioredis.Redis, pg: Any) -> None:
    writer = AuditWriter(redis, pg, consumer="fault-test")
    while await writer.drain_once():
        pass


async def test_redis_stall_changes_nothing_answered_failed_and_accounts_for_every_text(
    settings, pg, fake_twilio, private_redis
) -> None:
    server, r = private_redis
    relay = await Relay(dataclasses.replace(settings, redis_url=server.url), r, pg, fake_twilio).start(
        redis=r
    )
    try:
        ks = await relay.service()
        await relay.numbers(ks, PROXY_A, PROXY_B)
        session = await relay.session(ks, CUSTOMER, COURIER)
        proxy = session["proxy"]
        answers: dict[str, bool] = {}  # MessageSid -> answered with relaying TwiML
        relayed_at: list[tuple[float, float]] = []  # (sent, answered) of the texts that relayed
        creates: list[tuple[str, int]] = []  # (UniqueName, HTTP status)

        async def text(i: int) -> None:
            sender, other = (CUSTOMER, COURIER) if i % 2 else (COURIER, CUSTOMER)
            sid = "SM" + secrets.token_hex(16)
            sent = time.monotonic()
            status, xml = await relay.sms(sender, proxy[sender], f"text {i}", sid=sid)
            assert status == 200, xml
            answers[sid] = _relayed(xml)
            if answers[sid]:
                relayed_at.append((sent, time.monotonic()))

        async def create(i: int) -> None:
            name = f"stall-{i}-{secrets.token_hex(3)}"
            form = [
                ("UniqueName", name),
                ("Participants", orjson.dumps({"Identifier": f"+12125550{100 + i}"}).decode()),
            ]
            status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
            creates.append((name, status))

        async def stall() -> float:
            await asyncio.sleep(BEFORE_S)
            server.pause()
            await asyncio.sleep(STALL_S)
            server.resume()
            return time.monotonic()

        total_s = BEFORE_S + STALL_S + AFTER_S
        woke, _, _ = await asyncio.gather(
            stall(),
            paced(TEXTS_PER_S, int(TEXTS_PER_S * total_s), text),
            paced(CREATES_PER_S, int(CREATES_PER_S * total_s), create),
        )

        # Recovery: the first text sent after Redis woke up that relayed, answered how soon.
        recovery_s = min(answered for sent, answered in relayed_at if sent >= woke) - woke

        fallbacks = relay.runner.app[RELAY].fallbacks  # type: ignore[union-attr]
        await asyncio.wait_for(fallbacks.flush(), timeout=15)  # what the recorder does in the background
        await _drain_audit(r, pg)

        # The audit log: the final outcome of every interaction, by the MessageSid it answered.
        final = await final_outcomes(pg, ks)

        fell_back = [sid for sid, relayed in answers.items() if not relayed]
        phantoms = [sid for sid in fell_back if final.get(sid) == "relay"]
        missing = [sid for sid in answers if sid not in final]
        wrongly_failed = [sid for sid, relayed in answers.items() if relayed and final.get(sid) != "relay"]
        print(
            f"\n{len(answers)} texts: {len(answers) - len(fell_back)} relayed, {len(fell_back)} fallback; "
            f"audit outcomes {Counter(final[s] for s in answers if s in final)}; recovery {recovery_s:.2f} s; "
            f"creates {Counter(s for _, s in creates)}"
        )
        assert fell_back, "the stall should have made some texts fall back"
        assert phantoms == [], f"{len(phantoms)} texts answered with fallback are on record as relayed"
        assert missing == [], f"{len(missing)} texts are not in the audit log"
        assert wrongly_failed == []
        assert recovery_s < 2.0

        # Nothing answered 503 was created, and no pair leaked.
        failed = [name for name, status in creates if status == 503]
        assert failed, "the stall should have made some creates answer 503"
        assert all(status in (201, 503) for _, status in creates), Counter(s for _, s in creates)
        for name in failed:
            assert await r.get(keys.unique_name(ks, name)) is None, f"session {name} was created after a 503"
        created = sum(1 for _, status in creates if status == 201)
        in_use = [int(await r.hget(keys.number(ks, n), "in_use") or 0) for n in (PROXY_A, PROXY_B)]
        assert sum(in_use) == 2 + created  # the first session's two pairs + one per created session
    finally:
        await relay.stop()
