"""The relay end to end: sessions made through the API, then signed webhooks exactly as Twilio sends
them, against real Redis and Postgres; assertions on the TwiML, the fake Twilio's request log and
the Interactions API. Texts, calls, opt-out (callbacks: test_relay_callbacks.py; retries,
signatures and faults: test_relay_retries.py)."""

from __future__ import annotations

import orjson
from relay_harness import (
    COURIER,
    CUSTOMER,
    GUEST,
    HOST,
    PROXY_A,
    PROXY_B,
    Relay,
    call_params,
    events_of,
    message_of,
    parse,
    world,
)

from core import keys

# ------------------------------------------------------------------------------------------ texts


async def test_courier_and_customer_texts_reach_each_other_from_proxy_numbers(relay: Relay) -> None:
    ks, sess = await world(relay)
    proxy = sess["proxy"]

    status, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "Where are you? <3 & co")
    assert status == 200
    msg = message_of(xml)
    assert msg.get("to") == COURIER
    assert msg.get("from") == proxy[COURIER]
    assert msg.text == "Where are you? <3 & co"
    callback = msg.get("statusCallback")
    assert callback.startswith(f"{relay.url}/twilio/status/message?Service={ks}&Interaction=KI")

    status, xml = await relay.sms(COURIER, proxy[COURIER], "Two minutes away")
    msg = message_of(xml)
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

    types = [t for t, _ in await events_of(relay.redis, ks)]
    assert types.count("interaction.created") == 2
    assert "interaction.updated" in types

    status, session = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}")
    assert session["status"] == "in-progress"


async def test_mms_relays_every_media_url(relay: Relay) -> None:
    ks, sess = await world(relay)
    media = (
        "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1",
        "https://example.com/b?x=1&y=2",
    )
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "look", media=media)
    msg = message_of(xml)
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
    assert message_of(xml1).get("to") == COURIER
    assert message_of(xml2).get("to") == GUEST


async def test_stranger_texting_a_proxy_number_gets_polite_reply_and_nothing_is_relayed(relay: Relay) -> None:
    ks, sess = await world(relay, OutOfSessionMessage="Sorry, this chat has ended.")
    status, xml = await relay.sms(HOST, sess["proxy"][CUSTOMER], "hi, who is this?")
    assert status == 200
    msg = message_of(xml)
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
    ks, sess = await world(relay)
    # A pool number of the Service, but not the one the customer was given.
    wrong = PROXY_B if sess["proxy"][CUSTOMER] == PROXY_A else PROXY_A
    _, xml = await relay.sms(CUSTOMER, wrong, "hello?")
    assert "to=" not in xml and message_of(xml).text.startswith("This conversation has ended")
    assert await relay.interactions(ks, sess["sid"]) == []


async def test_closed_and_cooling_off_session_is_never_relayed(relay: Relay) -> None:
    ks, sess = await world(relay, CoolOff=3600)
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    assert status == 200
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "are you there?")
    assert "Dial" not in xml and message_of(xml).get("to") is None
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
    assert message_of(xml).get("to") is None and "calls" in message_of(xml).text


# ------------------------------------------------------------------------------------------ calls


async def test_call_dials_the_other_party_with_the_proxy_number_as_caller_id(relay: Relay) -> None:
    ks, sess = await world(relay)
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
    ks, sess = await world(relay)
    _, xml = await relay.call(COURIER, sess["proxy"][COURIER])
    action = parse(xml).find("Dial").get("action")
    await relay.post(action[len(relay.url) :], {"DialCallStatus": "busy", "DialCallSid": "CA" + "e" * 32})
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert ix["outbound_resource_status"] == "busy"


async def test_call_options_time_limit_whisper_and_recording_consent(relay: Relay) -> None:
    ks, sess = await world(
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


# ------------------------------------------------------------------------------------------ opt-out, help


async def test_stop_is_never_forwarded_and_is_honoured_until_start(relay: Relay) -> None:
    ks, sess = await world(relay, HelpMessage="Maskline: texts relay to your courier.")
    proxy = sess["proxy"]
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "  Stop ")
    assert message_of(xml) is None
    # The courier's texts no longer reach the customer from that number.
    _, xml = await relay.sms(COURIER, proxy[COURIER], "hello?")
    assert message_of(xml) is None
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "help")
    assert (
        message_of(xml).text == "Maskline: texts relay to your courier." and message_of(xml).get("to") is None
    )
    _, xml = await relay.sms(CUSTOMER, proxy[CUSTOMER], "START")
    assert message_of(xml) is None
    _, xml = await relay.sms(COURIER, proxy[COURIER], "back again")
    assert message_of(xml).get("to") == CUSTOMER
    ixs = await relay.interactions(ks, sess["sid"])
    assert len(ixs) == 5  # STOP, the blocked text, HELP, START and the relayed text are all recorded
    assert sum(1 for ix in ixs if ix["outbound_resource_status"] == "failed") == 4
