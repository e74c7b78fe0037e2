"""Proactive messages (MessageInteractions) through Twilio's REST API, the Interactions API, and
the hand-built TwiML checked against twilio.twiml."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import orjson
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay
from twilio.twiml.messaging_response import MessagingResponse
from twilio.twiml.voice_response import Dial, VoiceResponse

from core import keys
from relay import twiml


async def _world(relay: Relay) -> tuple[str, dict]:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    return ks, await relay.session(ks, CUSTOMER, COURIER)


async def test_proactive_message_is_sent_from_the_proxy_number_after_a_429(relay: Relay) -> None:
    ks, sess = await _world(relay)
    kc, kp = sess["sid"], sess["participants"][CUSTOMER]
    relay.fake.fail_next(1, 429)
    status, body = await relay.api(
        "POST",
        f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions",
        [("Body", "Your order is on its way"), ("MediaUrl", "https://example.com/map.png")],
    )
    assert status == 201, body
    path = f"/2010-04-01/Accounts/{relay.settings.twilio_account_sid}/Messages.json"
    assert relay.fake.log == [f"POST {path} > 429", f"POST {path} > 201"]
    sent = relay.fake.requests[-1]
    assert sent.form["To"] == CUSTOMER and sent.form["From"] == sess["proxy"][CUSTOMER]
    assert sent.form["Body"] == "Your order is on its way"
    assert sent.form_all["MediaUrl"] == ["https://example.com/map.png"]
    assert (
        sent.form["StatusCallback"]
        == f"{relay.url}/twilio/status/message?Service={ks}&Interaction={body['sid']}&Session={sess['sid']}"
    )
    assert sent.headers["Authorization"].startswith("Basic ")

    assert body["participant_sid"] == kp and body["outbound_participant_sid"] == kp
    assert body["inbound_participant_sid"] is None and body["inbound_resource_sid"] is None
    assert body["outbound_resource_sid"].startswith("SM") and body["outbound_resource_status"] == "queued"
    assert body["outbound_resource_type"] == "Message"
    assert orjson.loads(body["data"]) == {
        "body": "Your order is on its way",
        "media": ["https://example.com/map.png"],
    }
    assert body["url"].endswith(f"/Participants/{kp}/MessageInteractions/{body['sid']}")

    status, page = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions"
    )
    assert [m["sid"] for m in page["interactions"]] == [body["sid"]]
    status, one = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions/{body['sid']}"
    )
    assert status == 200 and one["sid"] == body["sid"]
    status, ix = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions/{body['sid']}")
    assert status == 200 and ix["type"] == "message"

    # The delivery receipt arrives at the StatusCallback.
    status, _ = await relay.post(
        sent.form["StatusCallback"][len(relay.url) :],
        {"MessageSid": body["outbound_resource_sid"], "MessageStatus": "delivered"},
    )
    status, ix = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions/{body['sid']}")
    assert ix["outbound_resource_status"] == "delivered"

    entries = await relay.redis.xrange(keys.events(ks))
    created = [orjson.loads(f["data"]) for _, f in entries if f["type"] == "interaction.created"]
    assert created and CUSTOMER in created[-1]["numbers"]


async def test_proactive_message_to_an_opted_out_participant_is_refused(relay: Relay) -> None:
    ks, sess = await _world(relay)
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "STOP")
    kp = sess["participants"][CUSTOMER]
    status, body = await relay.api(
        "POST",
        f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions",
        {"Body": "hi"},
    )
    assert status == 400 and body["code"] == 21610
    assert relay.fake.messages == []


async def test_proactive_message_when_twilio_stays_down_is_recorded_as_failed(relay: Relay) -> None:
    ks, sess = await _world(relay)
    kp = sess["participants"][COURIER]
    relay.fake.fail_next(10, 503)
    status, body = await relay.api(
        "POST",
        f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions",
        {"Body": "hi"},
    )
    assert status == 503 and body["code"] == 20503
    assert len(relay.fake.log) == 4  # a few attempts, then give up
    (ix,) = await relay.interactions(ks, sess["sid"])
    assert ix["outbound_resource_status"] == "failed"


async def test_proactive_message_needs_a_body_and_a_live_session(relay: Relay) -> None:
    ks, sess = await _world(relay)
    kp = sess["participants"][COURIER]
    base = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions"
    status, body = await relay.api("POST", base, {})
    assert status == 400 and body["code"] == 21602
    await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    status, body = await relay.api("POST", base, {"Body": "late"})
    assert status == 400 and body["code"] == 80607
    status, body = await relay.api("POST", base.replace(kp, "KP" + "0" * 32), {"Body": "x"})
    assert status == 404


async def test_interactions_can_be_deleted_and_unknown_ones_are_404(relay: Relay) -> None:
    ks, sess = await _world(relay)
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    (ix,) = await relay.interactions(ks, sess["sid"])
    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Interactions/{ix['sid']}"
    assert (await relay.api("DELETE", path))[0] == 204
    assert (await relay.api("GET", path))[0] == 404
    assert await relay.interactions(ks, sess["sid"]) == []
    status, body = await relay.api("GET", f"/v1/Services/{ks}/Sessions/KC{'0' * 32}/Interactions")
    assert status == 404 and body["code"] == 20404


# ------------------------------------------------------------------------------------------ TwiML


def _tree(xml: str) -> list[tuple[str, dict[str, str], str]]:
    return [(e.tag, dict(e.attrib), (e.text or "").strip()) for e in ET.fromstring(xml).iter()]


HOSTILE = "Tom & \"Jerry\" <b>'50%' \u00e9\u4e2d\U0001f600"


def test_message_twiml_matches_twilio_library() -> None:
    cb = "https://m.example/twilio/status/message?Service=KS1&Interaction=KI1"
    mine = twiml.messages([(COURIER, PROXY_A, HOSTILE, (), cb)])
    theirs = MessagingResponse()
    theirs.message(HOSTILE, to=COURIER, from_=PROXY_A, status_callback=cb)
    assert _tree(mine) == _tree(theirs.to_xml())


def test_mms_twiml_matches_twilio_library() -> None:
    media = ["https://x.example/a?b=1&c=2", "https://x.example/<odd>"]
    mine = twiml.messages([(COURIER, PROXY_A, HOSTILE, media, None)])
    theirs = MessagingResponse()
    msg = theirs.message(to=COURIER, from_=PROXY_A)
    msg.body(HOSTILE)
    for url in media:
        msg.media(url)
    assert _tree(mine) == _tree(theirs.to_xml())


def test_dial_twiml_matches_twilio_library() -> None:
    action = "https://m.example/twilio/voice/dial-status?Service=KS1&Interaction=KI1"
    whisper = "https://m.example/twilio/voice/whisper?Service=KS1&Interaction=KI1"
    status = "https://m.example/twilio/status/call?Service=KS1&Interaction=KI1"
    mine = twiml.dial(
        number=COURIER, caller_id=PROXY_A, action=action, time_limit_s=600, record=True,
        announce="Recorded & kept", whisper_url=whisper, status_callback=status,
    )  # fmt: skip
    theirs = VoiceResponse()
    theirs.say("Recorded & kept")
    dial = Dial(action=action, caller_id=PROXY_A, record="record-from-answer-dual", time_limit=600)
    dial.number(COURIER, status_callback=status, status_callback_event="answered completed", url=whisper)
    theirs.append(dial)
    assert _tree(mine) == _tree(theirs.to_xml())


def test_reply_say_reject_and_empty_match_twilio_library() -> None:
    theirs = MessagingResponse()
    theirs.message(HOSTILE)
    assert _tree(twiml.reply(HOSTILE)) == _tree(theirs.to_xml())
    voice = VoiceResponse()
    voice.say(HOSTILE)
    voice.hangup()
    assert _tree(twiml.say(HOSTILE)) == _tree(voice.to_xml())
    voice = VoiceResponse()
    voice.reject()
    assert _tree(twiml.reject()) == _tree(voice.to_xml())
    assert _tree(twiml.EMPTY) == _tree(VoiceResponse().to_xml())


def test_gather_twiml_matches_twilio_library() -> None:
    action = "https://relay.example/twilio/voice?a=1&b=<2>"
    voice = VoiceResponse()
    gather = voice.gather(num_digits=4, action=action, method="POST")
    gather.say(HOSTILE)
    voice.say("bye")
    voice.hangup()
    assert _tree(twiml.gather(HOSTILE, num_digits=4, action=action, then="bye")) == _tree(voice.to_xml())


def test_control_characters_never_break_the_twiml() -> None:
    xml = twiml.messages([(COURIER, PROXY_A, "bell\x07 and nul\x00 and tab\t ok", (), None)])
    assert ET.fromstring(xml).find("Message").text == "bell and nul and tab\t ok"


def test_escaping_skips_only_what_needs_no_change() -> None:
    # The fast path (a string with nothing to escape goes out as it is) gives exactly what the
    # escaping gives, for plain strings and for every character the escaping would change.
    from xml.sax.saxutils import escape, quoteattr

    samples = [
        "+14155550101",
        "on my way",
        "it's 5'",
        'say "hi"',
        "a\nb",
        "a\tb\rc",
        "x & y",
        "<b>",
        "\x07bell",
        "\ufffe",
    ]
    for s in samples:
        clean = "".join(c for c in s if c not in "\x07\ufffe")
        assert twiml.text_safe(s) == escape(clean), s
        assert twiml._attr(s) == quoteattr(clean), s
