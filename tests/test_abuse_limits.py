"""Abuse limits per Service (Maskline extensions): texts per minute and calls per hour, per
participant number and per proxy number, counted inside the routing script. Past a limit the
sender gets the Service's polite reply (TwiML), nothing is relayed, and every attempt is audited
(interaction.created, plus interaction.rate_limited for each refused one)."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
from relay_harness import (
    COURIER,
    CUSTOMER,
    GUEST,
    HOST,
    PROXY_A,
    PROXY_B,
    Relay,
    events_of,
    message_of,
    parse,
)

from audit.writer import AuditWriter
from relay.credentials import create_key
from sessions.models import DEFAULT_RATE_LIMIT_MESSAGE


async def _metric(relay: Relay, kind: str) -> float:
    assert relay.http is not None
    async with relay.http.get(relay.local + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(f'maskline_rate_limited_total{{kind="{kind}"}}'):
                return float(line.split()[-1])
    return 0.0


async def test_100_texts_in_a_minute_relay_exactly_the_limit_and_are_all_audited(relay: Relay) -> None:
    ks = await relay.service(TextsPerMinute=10)
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    before = await _metric(relay, "message")

    answers = await asyncio.gather(
        *(relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], f"flood {i}") for i in range(100))
    )
    relayed, refused = [], []
    for status, xml in answers:
        assert status == 200
        msg = message_of(xml)
        assert msg is not None
        (relayed if msg.get("to") == COURIER else refused).append(msg)
    assert len(relayed) == 10 and len(refused) == 90
    assert all(m.get("to") is None and m.text == DEFAULT_RATE_LIMIT_MESSAGE for m in refused)
    assert await _metric(relay, "message") - before == 90

    # Every attempt is on record: 100 interactions, 90 of them refused by the limit.
    events = await events_of(relay.redis, ks)
    created = [d for t, d in events if t == "interaction.created"]
    limited = [d for t, d in events if t == "interaction.rate_limited"]
    assert len(created) == 100 and len(limited) == 90
    assert sorted(d["outcome"] for d in created).count("rate_limited") == 90
    stored = await AuditWriter(relay.redis, relay.pg, consumer="limits").drain_once()
    assert stored >= 190
    count = await relay.pg.fetchval(
        "SELECT count(*) FROM audit_events WHERE service_sid = $1 AND type = 'interaction.rate_limited'", ks
    )
    assert count == 90

    # The courier is not limited by the customer's flood; STOP always gets through.
    status, xml = await relay.sms(COURIER, sess["proxy"][COURIER], "stop flooding")
    assert message_of(xml).get("to") == CUSTOMER  # type: ignore[union-attr]
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "STOP")
    assert status == 200 and "rate" not in xml.lower()


async def test_calls_per_hour_and_per_proxy_number_limits_answer_with_the_services_words(
    relay: Relay,
) -> None:
    ks = await relay.service(CallsPerHour=2, ProxyTextsPerMinute=3, RateLimitMessage="Easy there.")
    await relay.numbers(ks, PROXY_A)  # one number: every participant's proxy number
    sess = await relay.session(ks, CUSTOMER, COURIER)
    calls = [parse((await relay.call(CUSTOMER, PROXY_A))[1]) for _ in range(3)]
    assert [c.find("Dial") is not None for c in calls] == [True, True, False]
    assert calls[2].findtext("Say") == "Easy there."
    assert await _metric(relay, "voice") >= 1

    # Per proxy number: two senders in two sessions share PROXY_A's budget of 3 texts a minute.
    other = await relay.session(ks, HOST, GUEST)
    assert sess["proxy"][COURIER] == other["proxy"][HOST] == PROXY_A
    texts = [message_of((await relay.sms(who, PROXY_A, "hi"))[1]) for who in (COURIER, HOST, COURIER, HOST)]
    assert [t.get("to") for t in texts] == [CUSTOMER, GUEST, CUSTOMER, None]  # type: ignore[union-attr]
    assert texts[3].text == "Easy there."  # type: ignore[union-attr]


async def test_limits_can_be_lifted_and_bad_values_are_refused_with_20422(relay: Relay) -> None:
    ks = await relay.service(TextsPerMinute=1)
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    first = message_of((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "one"))[1])
    second = message_of((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "two"))[1])
    assert first.get("to") == COURIER and second.get("to") is None  # type: ignore[union-attr]
    status, body = await relay.api("POST", f"/v1/Services/{ks}", {"TextsPerMinute": "-1"})
    assert status == 400 and body["code"] == 20422 and "TextsPerMinute" in body["message"]
    await relay.update_service(ks, TextsPerMinute=0)
    third = message_of((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "three"))[1])
    assert third.get("to") == COURIER  # type: ignore[union-attr]
    status, body = await relay.api("GET", f"/v1/Services/{ks}")
    assert body["options"]["texts_per_minute"] == 0


async def test_api_requests_past_a_keys_limit_get_429_with_retry_after(
    settings, redis, pg, fake_twilio
) -> None:  # type: ignore[no-untyped-def]
    relay = await Relay(dataclasses.replace(settings, api_rate_limit=5), redis, pg, fake_twilio).start()
    try:
        assert relay.http is not None
        http = relay.http

        async def get() -> tuple[int, str | None, dict]:
            async with http.get(relay.local + "/v1/Services", headers=relay.auth) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()

        answers = await asyncio.gather(*(get() for _ in range(30)))
        refused = [(wait, body) for status, wait, body in answers if status == 429]
        assert len(refused) >= 20  # at most 5 a second pass (10 if the burst straddles two seconds)
        assert {body["code"] for _, body in refused} == {20429}
        assert {wait for wait, _ in refused} == {"1"}

        # Another key has its own budget; the first key's comes back with the next second.
        sid, secret = await create_key(pg, "other")
        other = {"Authorization": aiohttp.encode_basic_auth(sid, secret)}
        async with http.get(relay.local + "/v1/Services", headers=other) as r:
            assert r.status == 200
        await asyncio.sleep(1.1)
        status, _ = await relay.api("GET", "/v1/Services")
        assert status == 200
    finally:
        await relay.stop()
