"""The relay end to end: sessions made through the API, then signed webhooks exactly as Twilio sends
them, against real Redis and Postgres; assertions on the TwiML, the fake Twilio's request log and
the Interactions API."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from relay_harness import (
    COURIER,
    CUSTOMER,
    GUEST,
    HOST,
    PROXY_A,
    PROXY_B,
    PROXY_C,
    Relay,
    call_params,
    parse,
    sms_params,
)

from core import keys


@pytest.fixture
async def relay(settings, redis, pg, fake_twilio) -> AsyncIterator[Relay]:
    r = await Relay(settings, redis, pg, fake_twilio).start()
    try:
        yield r
    finally:
        await r.stop()


async def _world(relay: Relay, **service: object) -> tuple[str, dict]:
    ks = await relay.service(**service)
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    return ks, sess


def _message(xml: str):
    root = parse(xml)
    assert root.tag == "Response"
    return root.find("Message")


async def _events(redis: aioredis.Redis, ks: str) -> list[tuple[str, dict]]:
    entries = await redis.xrange(keys.events(ks))
    return [(f["type"], orjson.loads(f["data"])) for _, f in entries]


# ------------------------------------------------------------------------------------------ texts


async def test_courier_and_customer_texts_reach_each_other_from_proxy_numbers(relay: Relay) -> None:
    ks, sess = await _world(relay)
    proxy = sess["proxy"]

    status, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "Where are you? <3 & co")
    assert status == 200
    msg = _message(xml)
    assert msg.get("to") == COURIER
    assert msg.get("from") == proxy[COURIER]
    assert msg.text == "Where are you? <3 & co"
    callback = msg.get("statusCallback")
    assert callback.startswith(f"{relay.url}/twilio/status/message?Service={ks}&Interaction=KI")

    status, xml = await relay.sms(COURIER, proxy[COURIER], "Two minutes away")
    msg = _message(xml)
    assert (msg.get("to"), msg.get("from"), msg.text) == (CUSTOMER, proxy[CUSTOMER], "Two minutes away")

    ixs = await relay.interactions(ks, sess["sid"])
    assert len(ixs) == 2
    first = ixs[-1]
    assert first["type"] == "message"
    assert orjson.loads(first["data"]) == {"body": "Where are you? <3 & co"}
    assert first["inbound_participant_sid"] == sess["participants"][CUSTOMER]
    assert first["outbound_participant_sid"] == sess["participants"][COURIER]
    assert first["inbound_resource_type"] == "Message" and first["inbound_resource_status"] == "received"
    assert first["inbound_resource_url"].endswith(f"/Messages/{first['inbound_resource_sid']}.json")
    assert first["outbound_resource_status"] == "initiated"
    assert set(first) == {
        "sid", "session_sid", "service_sid", "account_sid", "data", "type",
        "inbound_participant_sid", "inbound_resource_sid", "inbound_resource_status", "inbound_resource_type",
        "inbound_resource_url", "outbound_participant_sid", "outbound_resource_sid", "outbound_resource_status",
        "outbound_resource_type", "outbound_resource_url", "date_created", "date_updated", "url",
    }  # fmt: skip

    # Twilio's status callback for the relayed message updates the interaction.
    path = callback[len(relay.url) :]
    out_sid = "SM" + "5" * 32
    status, _ = await relay.post(
        path,
        {"MessageSid": out_sid, "MessageStatus": "delivered", "AccountSid": relay.settings.twilio_account_sid,
         "From": proxy[COURIER], "To": COURIER, "ApiVersion": "2010-04-01", "SmsStatus": "delivered"},
    )  # fmt: skip
    assert status == 204
    status, fetched = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Interactions/{first['sid']}"
    )
    assert fetched["outbound_resource_status"] == "delivered"
    assert fetched["outbound_resource_sid"] == out_sid
    # A late "sent" does not move it back.
    await relay.post(path, {"MessageSid": out_sid, "MessageStatus": "sent"})
    status, fetched = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Interactions/{first['sid']}"
    )
    assert fetched["outbound_resource_status"] == "delivered"

    types = [t for t, _ in await _events(relay.redis, ks)]
    assert types.count("interaction.created") == 2
    assert "interaction.updated" in types

    status, session = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}")
    assert session["status"] == "in-progress"


async def test_mms_relays_every_media_url(relay: Relay) -> None:
    ks, sess = await _world(relay)
    media = (
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://example.com/b?x=1&y=2",
    )
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "look", media=media)
    msg = _message(xml)
    assert msg.find("Body").text == "look"
    assert [m.text for m in msg.findall("Media")] == list(media)
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert orjson.loads(ix["data"])["media"] == list(media)


async def test_two_sessions_sharing_one_proxy_number_route_by_sender(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A)
    a = await relay.session(ks, CUSTOMER, COURIER)
    b = await relay.session(ks, HOST, GUEST)
    assert a["proxy"][CUSTOMER] == b["proxy"][HOST] == PROXY_A
    _, xml1 = await relay.sms(CUSTOMER, PROXY_A, "to courier")
    _, xml2 = await relay.sms(HOST, PROXY_A, "to guest")
    assert _message(xml1).get("to") == COURIER
    assert _message(xml2).get("to") == GUEST


async def test_stranger_texting_a_proxy_number_gets_polite_reply_and_nothing_is_relayed(relay: Relay) -> None:
    ks, sess = await _world(relay, OutOfSessionMessage="Sorry, this chat has ended.")
    status, xml = await relay.sms(HOST, sess["proxy"][CUSTOMER], "hi, who is this?")
    assert status == 200
    msg = _message(xml)
    assert msg.get("to") is None and msg.text == "Sorry, this chat has ended."
    status, xml = await relay.call(HOST, sess["proxy"][CUSTOMER])
    root = parse(xml)
    assert root.find("Say").text == "Sorry, this chat has ended." and root.find("Dial") is None
    assert await relay.interactions(ks, sess["sid"]) == []
    # Never relayed, but on the record for the audit log: who tried to reach whom, how.
    events = [e for _, e in await relay.redis.xrange(keys.events(ks)) if e["type"] == "interaction.created"]
    stray = [orjson.loads(e["data"]) for e in events]
    assert [(d["outcome"], d["type"], d["inbound_identifier"]) for d in stray] == [
        ("out_of_session", "message", HOST),
        ("out_of_session", "voice", HOST),
    ]


async def test_participant_texting_the_wrong_proxy_number_is_not_relayed(relay: Relay) -> None:
    ks, sess = await _world(relay)
    # A pool number of the Service, but not the one the customer was given.
    wrong = PROXY_B if sess["proxy"][CUSTOMER] == PROXY_A else PROXY_A
    _, xml = await relay.sms(CUSTOMER, wrong, "hello?")
    assert "to=" not in xml and _message(xml).text.startswith("This conversation has ended")
    assert await relay.interactions(ks, sess["sid"]) == []


async def test_closed_and_cooling_off_session_is_never_relayed(relay: Relay) -> None:
    ks, sess = await _world(relay, CoolOff=3600)
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    assert status == 200
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "are you there?")
    assert "Dial" not in xml and _message(xml).get("to") is None
    _, xml = await relay.call(COURIER, sess["proxy"][COURIER])
    assert parse(xml).find("Dial") is None
    # The pair is still held (cooling off) by the closed session: a new session cannot take it.
    assert await relay.redis.get(keys.pair(ks, CUSTOMER, sess["proxy"][CUSTOMER])) is not None


async def test_mode_refusals(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    texts = await relay.session(ks, CUSTOMER, COURIER, Mode="message-only")
    calls = await relay.session(ks, HOST, GUEST, Mode="voice-only")
    _, xml = await relay.call(CUSTOMER, texts["proxy"][CUSTOMER])
    root = parse(xml)
    assert root.find("Dial") is None and "text messages" in root.find("Say").text
    _, xml = await relay.sms(HOST, calls["proxy"][HOST], "hi")
    assert _message(xml).get("to") is None and "calls" in _message(xml).text


# ------------------------------------------------------------------------------------------ calls


async def test_call_dials_the_other_party_with_the_proxy_number_as_caller_id(relay: Relay) -> None:
    ks, sess = await _world(relay)
    proxy = sess["proxy"]
    status, xml = await relay.call(CUSTOMER, proxy[CUSTOMER])
    assert status == 200
    root = parse(xml)
    dial = root.find("Dial")
    assert dial.get("callerId") == proxy[COURIER]
    assert dial.find("Number").text == COURIER
    assert dial.get("timeLimit") is None and dial.get("record") is None
    assert CUSTOMER not in xml  # the callee never sees the caller's real number
    action = dial.get("action")
    assert action.startswith(f"{relay.url}/twilio/voice/dial-status?Service={ks}&Interaction=KI")

    dial_sid = "CA" + "d" * 32
    status, xml = await relay.post(
        action[len(relay.url) :],
        {**call_params(relay.settings.twilio_account_sid, CUSTOMER, proxy[CUSTOMER]),
         "DialCallStatus": "completed", "DialCallSid": dial_sid, "DialCallDuration": "42", "DialBridged": "true"},
    )  # fmt: skip
    assert status == 200 and parse(xml).tag == "Response"
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert ix["type"] == "voice" and ix["inbound_resource_type"] == "Call"
    assert ix["outbound_resource_status"] == "completed" and ix["outbound_resource_sid"] == dial_sid
    assert ix["inbound_resource_status"] == "completed"
    assert orjson.loads(ix["data"])["duration"] == "42"


async def test_busy_callee_is_recorded(relay: Relay) -> None:
    ks, sess = await _world(relay)
    _, xml = await relay.call(COURIER, sess["proxy"][COURIER])
    action = parse(xml).find("Dial").get("action")
    await relay.post(action[len(relay.url) :], {"DialCallStatus": "busy", "DialCallSid": "CA" + "e" * 32})
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert ix["outbound_resource_status"] == "busy"


async def test_call_options_time_limit_whisper_and_recording_consent(relay: Relay) -> None:
    ks, sess = await _world(
        relay, CallTimeLimit=600, Whisper="Call from your Maskline customer", RecordCalls="true",
        RecordingConsent="This call is recorded for quality.",
    )  # fmt: skip
    _, xml = await relay.call(CUSTOMER, sess["proxy"][CUSTOMER])
    root = parse(xml)
    assert root.find("Say").text == "This call is recorded for quality."  # the caller hears it first
    dial = root.find("Dial")
    assert dial.get("timeLimit") == "600"
    assert dial.get("record") == "record-from-answer-dual"
    whisper = dial.find("Number").get("url")
    assert whisper.startswith(f"{relay.url}/twilio/voice/whisper?Service={ks}")
    status, xml = await relay.post(
        whisper[len(relay.url) :], call_params(relay.settings.twilio_account_sid, "+1", "+2")
    )
    say = parse(xml).find("Say").text
    assert "Call from your Maskline customer" in say and "recorded for quality" in say  # and the callee
    assert "Hangup" not in xml


# ------------------------------------------------------------------------------------------ intercept


async def test_intercept_403_blocks_and_anything_else_lets_through(relay: Relay) -> None:
    verdict = {"status": 403}
    seen: list[dict[str, str]] = []

    async def decide(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))
        return web.Response(status=verdict["status"])

    url = relay.fake.route("POST", "/intercept", decide)
    ks, sess = await _world(relay, InterceptCallbackUrl=url)
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "blocked one")
    assert _message(xml) is None
    assert seen[0]["interactionServiceSid"] == ks
    assert seen[0]["inboundParticipantSid"] == sess["participants"][CUSTOMER]
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert ix["outbound_resource_status"] == "failed"

    verdict["status"] = 500
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "allowed one")
    assert _message(xml).get("to") == COURIER

    verdict["status"] = 403
    _, xml = await relay.call(CUSTOMER, sess["proxy"][CUSTOMER])
    assert parse(xml).find("Dial") is None


async def test_intercept_timeout_lets_the_interaction_through(relay: Relay) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=403)

    url = relay.fake.route("POST", "/slow-intercept", slow)
    ks, sess = await _world(relay, InterceptCallbackUrl=url)
    started = time.monotonic()
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    elapsed = time.monotonic() - started
    assert _message(xml).get("to") == COURIER
    assert elapsed < relay.settings.webhook_deadline_s + 0.5


# ------------------------------------------------------------------------------------------ out of session


async def test_out_of_session_callback_twiml_is_obeyed_with_previous_session_fields(relay: Relay) -> None:
    got: list[dict[str, str]] = []

    async def oos(request: web.Request) -> web.Response:
        got.append(dict(await request.post()))
        return web.Response(
            text="<Response><Message>Call support on the app</Message></Response>",
            content_type="application/xml",
        )

    url = relay.fake.route("POST", "/oos", oos)
    ks, sess = await _world(relay, OutOfSessionCallbackUrl=url)
    await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "still there?")
    assert _message(xml).text == "Call support on the app"
    form = got[0]
    assert form["Body"] == "still there?" and form["From"] == CUSTOMER and form["FromCity"] == "SAN FRANCISCO"
    assert form["interactionSessionSid"] == sess["sid"]
    assert form["inboundParticipantSid"] == sess["participants"][CUSTOMER]
    assert form["outboundParticipantIdentifier"] == COURIER
    assert "X-Twilio-Signature" in relay.fake.requests[-1].headers


async def test_out_of_session_auto_create_keeps_the_dialled_proxy_number(relay: Relay) -> None:
    async def oos(request: web.Request) -> web.Response:
        return web.json_response({"uniqueName": "support-1", "ttl": 3600, "participantIdentifier": COURIER})

    url = relay.fake.route("POST", "/oos", oos)
    ks = await relay.service(OutOfSessionCallbackUrl=url)
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)
    # A stranger texts PROXY_C, which is not the least-used choice the pool would make.
    status, xml = await relay.sms(HOST, PROXY_C, "I need help with my order")
    msg = _message(xml)
    assert msg.get("to") == COURIER
    status, page = await relay.api("GET", f"/v1/Services/{ks}/Sessions")
    (session,) = page["sessions"]
    assert session["unique_name"] == "support-1"
    status, parts = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{session['sid']}/Participants")
    proxies = {p["identifier"]: p["proxy_identifier"] for p in parts["participants"]}
    assert proxies[HOST] == PROXY_C  # the number the sender actually texted
    assert msg.get("from") == proxies[COURIER]
    # And the courier's reply goes back to the customer through it.
    _, xml = await relay.sms(COURIER, proxies[COURIER], "On it")
    assert (_message(xml).get("to"), _message(xml).get("from")) == (HOST, PROXY_C)


# ------------------------------------------------------------------------------------------ opt-out, help


async def test_stop_is_never_forwarded_and_is_honoured_until_start(relay: Relay) -> None:
    ks, sess = await _world(relay, HelpMessage="Maskline: texts relay to your courier.")
    proxy = sess["proxy"]
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "  Stop ")
    assert _message(xml) is None
    # The courier's texts no longer reach the customer from that number.
    _, xml = await relay.sms(COURIER, proxy[COURIER], "hello?")
    assert _message(xml) is None
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "help")
    assert _message(xml).text == "Maskline: texts relay to your courier." and _message(xml).get("to") is None
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "START")
    assert _message(xml) is None
    _, xml = await relay.sms(COURIER, proxy[COURIER], "back again")
    assert _message(xml).get("to") == CUSTOMER
    ixs = await relay.interactions(ks, sess["sid"])
    assert len(ixs) == 5  # STOP, the blocked text, HELP, START and the relayed text are all recorded
    assert sum(1 for ix in ixs if ix["outbound_resource_status"] == "failed") == 4


# ------------------------------------------------------------------------------------------ retries, signatures


async def test_twilio_retry_gets_the_same_answer_and_is_relayed_once(relay: Relay) -> None:
    ks, sess = await _world(relay)
    params = sms_params(
        relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], "once", sid="SM" + "1" * 32
    )
    _, first = await relay.post("/twilio/sms", params)
    _, second = await relay.post("/twilio/sms", params)
    assert first == second and _message(first).get("to") == COURIER
    assert len(await relay.interactions(ks, sess["sid"])) == 1

    # A retry while the first is still being handled (marker set, no answer yet): empty TwiML.
    await relay.redis.set(keys.seen(ks, "SM" + "2" * 32), "")
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "again", sid="SM" + "2" * 32)
    assert list(parse(xml)) == []

    call = call_params(
        relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][CUSTOMER], sid="CA" + "3" * 32
    )
    _, a = await relay.post("/twilio/voice", call)
    _, b = await relay.post("/twilio/voice", call)
    assert a == b and parse(a).find("Dial") is not None
    assert len(await relay.interactions(ks, sess["sid"])) == 2


async def test_unsigned_and_tampered_webhooks_are_refused_and_not_acted_on(relay: Relay) -> None:
    ks, sess = await _world(relay)
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
    assert await relay.redis.keys(keys.seen(ks, "*")) == []


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
            assert _message(xml).get("to") == COURIER
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
    ks, sess = await _world(relay, InterceptCallbackUrl=relay.fake.route("POST", "/i", None))
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    await relay.sms(HOST, sess["proxy"][CUSTOMER], "stranger")
    await relay.sms(CUSTOMER, "+14155550299", "unknown number")
    await relay.call(COURIER, sess["proxy"][COURIER])
    text = caplog.text
    for number in (CUSTOMER, COURIER, HOST, PROXY_A, PROXY_B, "+14155550299"):
        assert number not in text and number[1:] not in text
    assert not re.search(r"\+?1\d{10}", text)


# ------------------------------------------------------------------------------------------ callbacks


async def test_callback_url_gets_each_interaction_without_delaying_the_relay(relay: Relay) -> None:
    got: list[dict[str, str]] = []
    arrived = asyncio.Event()

    async def slow_callback(request: web.Request) -> web.Response:
        got.append(dict(await request.post()))
        arrived.set()
        await asyncio.sleep(3)
        return web.Response(status=500)

    url = relay.fake.route("POST", "/callback", slow_callback)
    ks, sess = await _world(relay, CallbackUrl=url)
    started = time.monotonic()
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    assert time.monotonic() - started < 1.0
    assert _message(xml).get("to") == COURIER
    await asyncio.wait_for(arrived.wait(), 5)
    form = got[0]
    assert form["interactionServiceSid"] == ks and form["interactionSessionSid"] == sess["sid"]
    assert form["interactionType"] == "message" and orjson.loads(form["interactionData"]) == {"body": "hi"}
    assert form["inboundParticipantSid"] == sess["participants"][CUSTOMER]
    assert form["outboundParticipantSid"] == sess["participants"][COURIER]
    assert form["inboundResourceType"] == "message" and form["inboundResourceSid"].startswith("SM")
    assert form["outboundResourceStatus"] == "initiated"
