"""The relay on a bad day: Twilio's retries, forged or tampered signatures, Redis down or slow,
and logs that never hold a full phone number."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import redis.asyncio as aioredis
from relay_harness import (
    COURIER,
    CUSTOMER,
    GUEST,
    HOST,
    PROXY_A,
    PROXY_B,
    Relay,
    call_params,
    message_of,
    parse,
    sms_params,
    world,
)

from core import keys
from relay.state import RELAY, SESSIONS

# ------------------------------------------------------------------------------------------ retries, signatures


async def test_twilio_retry_gets_the_same_answer_and_is_relayed_once(relay: Relay) -> None:
    ks, sess = await world(relay)
    params = sms_params(
        relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], "once", sid="SM" + "1" * 32
    )
    _, first = await relay.post("/twilio/sms", params)
    await relay.answers_written()  # (Twilio retries seconds later)
    _, second = await relay.post("/twilio/sms", params)
    assert first == second and message_of(first).get("to") == COURIER
    assert len(await relay.interactions(ks, sess["sid"])) == 1

    # A retry while the first is still being handled (marker set, no answer yet): empty TwiML.
    await relay.redis.set(keys.seen(ks, "SM" + "2" * 32), "")
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "again", sid="SM" + "2" * 32)
    assert list(parse(xml)) == []

    call = call_params(
        relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], sid="CA" + "3" * 32
    )
    _, a = await relay.post("/twilio/voice", call)
    await relay.answers_written()
    _, b = await relay.post("/twilio/voice", call)
    assert a == b and parse(a).find("Dial") is not None
    assert len(await relay.interactions(ks, sess["sid"])) == 2


async def test_answered_relays_leave_nothing_in_flight_for_the_sweeper(relay: Relay) -> None:
    """Writing a webhook's answer takes its relays off the in-flight index: the sweeper judges only
    a relay whose answer was never written (its worker killed first), and settles that one."""
    ks, sess = await world(relay, MaxParticipants=3)
    group = await relay.session(ks, HOST, GUEST, CUSTOMER)
    assert message_of((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi"))[1]) is not None
    assert parse((await relay.call(COURIER, sess["proxy"][COURIER]))[1]).find("Dial") is not None
    _, xml = await relay.sms(HOST, group["proxy"][HOST], "to you both")  # two legs
    assert len(parse(xml).findall("Message")) == 2
    await relay.answers_written()
    assert await relay.redis.zcard(keys.inflight(ks)) == 0

    # Routed, never answered: in flight until the sweeper settles it as not relayed.
    router = relay.runner.app[RELAY].router
    route = await router.route_text(
        from_=COURIER, to=sess["proxy"][COURIER], message_sid="SM" + "4" * 32, body="lost"
    )
    assert await relay.redis.zrange(keys.inflight(ks), 0, -1) == [route.interaction_sid]
    await relay.redis.zadd(keys.inflight(ks), {route.interaction_sid: 0})  # (its deadline passed)
    assert await relay.runner.app[SESSIONS].settle_unanswered(ks, grace_ms=0) == (1, 1)
    outcomes = {ix["sid"]: ix["outbound_resource_status"] for ix in await relay.interactions(ks, sess["sid"])}
    assert outcomes.pop(route.interaction_sid) == "failed"
    assert set(outcomes.values()) == {"initiated"}  # the answered text and call stay relayed


async def test_unsigned_and_tampered_webhooks_are_refused_and_not_acted_on(relay: Relay) -> None:
    ks, sess = await world(relay)
    params = sms_params(relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    assert relay.http is not None
    async with relay.http.post(relay.url + "/twilio/sms", data=params) as resp:
        assert resp.status == 403
    # Signed, then a parameter changed on the way.
    from signing import sign

    headers = {
        "X-Twilio-Signature": sign(relay.url + "/twilio/sms", params, relay.settings.twilio_auth_token)
    }
    async with relay.http.post(
        relay.url + "/twilio/sms", data={**params, "Body": "evil"}, headers=headers
    ) as resp:
        assert resp.status == 403
    # Signed with another token, or over another URL.
    assert (await relay.post("/twilio/sms", params, token="not-the-token"))[0] == 403
    assert (await relay.post("/twilio/sms", params, signed_url="https://evil.example/twilio/sms"))[0] == 403
    assert (
        await relay.post(
            "/twilio/voice", call_params(relay.settings.twilio_account_sid, CUSTOMER, PROXY_A), token="x"
        )
    )[0] == 403
    assert (
        await relay.post(
            f"/twilio/status/message?Service={ks}&Interaction=KI1", {"MessageStatus": "failed"}, token="x"
        )
    )[0] == 403
    assert await relay.interactions(ks, sess["sid"]) == []
    assert [k async for k in relay.redis.scan_iter(match=keys.seen(ks, "*"))] == []


async def test_signature_over_public_url_without_default_port(settings, redis, pg, fake_twilio) -> None:
    """Behind a TLS-terminating proxy: Twilio signs https://host/..., with or without :443."""
    import dataclasses

    public = dataclasses.replace(settings, public_url="https://relay.example.com")
    relay = await Relay(public, redis, pg, fake_twilio).start()
    try:
        ks = await relay.service()
        await relay.numbers(ks, PROXY_A, PROXY_B)
        sess = await relay.session(ks, CUSTOMER, COURIER)
        for n, signed in enumerate(
            ("https://relay.example.com/twilio/sms", "https://relay.example.com:443/twilio/sms")
        ):
            params = sms_params(
                settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], "hi", sid=f"SM{n:032x}"
            )
            status, xml = await relay.post("/twilio/sms", params, signed_url=signed)
            assert status == 200, signed
            assert message_of(xml).get("to") == COURIER
        # Signed over the address the app listens on, not its public URL: refused.
        local = sms_params(settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], "hi")
        assert (await relay.post("/twilio/sms", local, signed_url=relay.local + "/twilio/sms"))[0] == 403
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------------ faults


async def test_redis_down_still_answers_valid_twiml_fast(settings, redis, pg, fake_twilio, caplog) -> None:
    caplog.set_level(logging.INFO)
    dead = aioredis.Redis(host="127.0.0.1", port=1, decode_responses=True, socket_connect_timeout=0.5)
    relay = Relay(settings, redis, pg, fake_twilio)
    await relay.start(redis=dead)
    try:
        started = time.monotonic()
        status, xml = await relay.sms(CUSTOMER, PROXY_A, "anyone?")
        assert status == 200 and parse(xml).tag == "Response" and list(parse(xml)) == []
        assert time.monotonic() - started < settings.webhook_deadline_s + 0.5
        started = time.monotonic()
        status, xml = await relay.call(CUSTOMER, PROXY_A)
        assert status == 200 and "Sorry" in parse(xml).find("Say").text
        assert time.monotonic() - started < settings.webhook_deadline_s + 0.5
        status, _ = await relay.post(
            "/twilio/status/message?Service=KS1&Interaction=KI1", {"MessageStatus": "sent"}
        )
        assert status == 204
    finally:
        await relay.stop()
        await dead.aclose()
    assert "failed" in caplog.text
    assert CUSTOMER not in caplog.text and PROXY_A not in caplog.text


async def test_slow_redis_is_cut_at_the_deadline(settings, redis, pg, fake_twilio) -> None:
    """A Redis that accepts connections and never answers (a hung server, a black-holed network)."""
    import dataclasses

    async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(-1)

    server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    hung = aioredis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=30)
    quick = dataclasses.replace(settings, webhook_deadline_s=0.3)
    relay = Relay(quick, redis, pg, fake_twilio)
    await relay.start(redis=hung)
    try:
        for send in (relay.call, relay.sms):
            started = time.monotonic()
            status, xml = await send(CUSTOMER, PROXY_A)
            assert status == 200 and parse(xml).tag == "Response"
            assert time.monotonic() - started < 1.0
    finally:
        await relay.stop()
        await hung.aclose()
        server.close()


async def test_logs_never_contain_a_full_phone_number(relay: Relay, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    ks, sess = await world(relay, InterceptCallbackUrl=relay.fake.route("POST", "/i", None))
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    await relay.sms(HOST, sess["proxy"][CUSTOMER], "stranger")
    await relay.sms(CUSTOMER, "+14155550299", "unknown number")
    await relay.call(COURIER, sess["proxy"][COURIER])
    text = caplog.text
    for number in (CUSTOMER, COURIER, HOST, PROXY_A, PROXY_B, "+14155550299"):
        assert number not in text and number[1:] not in text
    # A phone number stands alone; the same digits inside a hex sid (KS..., KI...) are not one.
    assert not re.search(r"(?<![0-9A-Za-z])\+?1\d{10}(?![0-9A-Za-z])", text)
