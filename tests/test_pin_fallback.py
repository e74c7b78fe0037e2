"""PIN mode (a Service's FallbackNumber, a Maskline extension): when the pool has no number left for
a participant, the session is still created with the shared number and a PIN; calls and texts to
the shared number find the session by the PIN, wrong PINs are limited, strangers never connect."""

from __future__ import annotations

import orjson
from relay_harness import COURIER, CUSTOMER, GUEST, HOST, PROXY_A, PROXY_B, PROXY_C, Relay, events_of, parse

from core import keys

SHARED = PROXY_C
FRIEND = "+12125550105"


async def _exhausted(relay: Relay) -> tuple[str, list[dict]]:
    """A pool of 2 numbers (and the shared one) and four sessions for CUSTOMER: the last two in PIN mode."""
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B, SHARED)
    await relay.update_service(ks, FallbackNumber=SHARED)
    sessions = [await relay.session(ks, CUSTOMER, other) for other in (COURIER, HOST, GUEST, FRIEND)]
    return ks, sessions


async def _participant(relay: Relay, ks: str, sess: dict, identifier: str) -> dict:
    kp = sess["participants"][identifier]
    status, body = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}")
    assert status == 200, body
    return dict(body)


async def test_the_pool_runs_out_and_the_session_gets_the_shared_number_and_a_pin(relay: Relay) -> None:
    ks, sessions = await _exhausted(relay)
    # The first two got numbers of their own (never the shared one), without a PIN.
    own = [s["proxy"][CUSTOMER] for s in sessions[:2]]
    assert sorted(own) == sorted([PROXY_A, PROXY_B])
    assert (await _participant(relay, ks, sessions[0], CUSTOMER))["pin"] is None
    # The next two: the shared number and two different 4-digit PINs; their counterparts a number of their own.
    pins = []
    for sess, other in zip(sessions[2:], (GUEST, FRIEND), strict=True):
        me = await _participant(relay, ks, sess, CUSTOMER)
        assert me["proxy_identifier"] == SHARED and len(me["pin"]) == 4 and me["pin"].isdigit()
        assert sess["proxy"][other] in (PROXY_A, PROXY_B)
        pins.append(me["pin"])
    assert pins[0] != pins[1]

    # Without FallbackNumber the same request is Twilio's 80208, and nothing is created.
    plain = await relay.service()
    await relay.numbers(plain, "+14155550204")
    await relay.session(plain, CUSTOMER, COURIER)
    form = [("Participants", orjson.dumps({"Identifier": i}).decode()) for i in (CUSTOMER, HOST)]
    status, body = await relay.api("POST", f"/v1/Services/{plain}/Sessions", form)
    assert status == 400 and body["code"] == 80208


async def test_a_call_with_the_right_pin_connects_and_wrong_pins_lock_the_caller_out(relay: Relay) -> None:
    ks, sessions = await _exhausted(relay)
    third, fourth = sessions[2], sessions[3]
    pin = (await _participant(relay, ks, third, CUSTOMER))["pin"]

    # Two live PIN sessions on the shared number: the caller is asked for the PIN.
    call_sid = "CA" + "12" * 16
    gather = parse((await relay.call(CUSTOMER, SHARED, sid=call_sid))[1]).find("Gather")
    assert gather is not None and gather.get("numDigits") == "4"
    assert gather.get("action") == relay.url + "/twilio/voice"
    # Twilio posts the Digits to the action with the same CallSid: the right PIN dials GUEST, with
    # GUEST's own proxy number as caller ID (the number GUEST calls back on).
    form = {"Digits": pin}
    status, xml = await relay.post("/twilio/voice", {**_call(relay, CUSTOMER, SHARED, call_sid), **form})
    dial = parse(xml).find("Dial")
    assert status == 200 and dial is not None
    assert dial.findtext("Number") == GUEST and dial.get("callerId") == third["proxy"][GUEST]
    interactions = await relay.interactions(ks, third["sid"])
    assert [i["type"] for i in interactions] == ["voice"] and interactions[0][
        "inbound_resource_sid"
    ] == call_sid
    assert not await relay.interactions(ks, fourth["sid"])

    # Five wrong PINs: asked again four times, then locked out; a sixth try, even the right PIN, is refused.
    other_call = "CA" + "34" * 16
    answers = []
    for _ in range(5):
        wrong = "0000" if pin != "0000" else "1111"
        xml = (
            await relay.post("/twilio/voice", {**_call(relay, CUSTOMER, SHARED, other_call), "Digits": wrong})
        )[1]
        answers.append(parse(xml))
    assert all(
        a.find("Gather") is not None and "not right" in a.findtext("Gather/Say", "") for a in answers[:4]
    )
    assert answers[4].find("Gather") is None and "Too many wrong PINs" in answers[4].findtext("Say", "")
    sixth = parse(
        (await relay.post("/twilio/voice", {**_call(relay, CUSTOMER, SHARED, other_call), **form}))[1]
    )
    assert sixth.find("Dial") is None and "Too many wrong PINs" in sixth.findtext("Say", "")
    types = [t for t, _ in await events_of(relay.redis, ks)]
    assert types.count("pin.failed") == 5 and types.count("pin.locked") == 1
    assert len(await relay.interactions(ks, third["sid"])) == 1  # nothing more relayed


async def test_texts_to_the_shared_number_use_the_pin_and_replies_carry_it(relay: Relay) -> None:
    ks, sessions = await _exhausted(relay)
    third, fourth = sessions[2], sessions[3]
    pin = (await _participant(relay, ks, third, CUSTOMER))["pin"]

    # A text starting with the PIN reaches GUEST without it, from GUEST's proxy number.
    xml = (await relay.sms(CUSTOMER, SHARED, f"{pin} on my way"))[1]
    msg = parse(xml).find("Message")
    assert msg is not None and msg.get("to") == GUEST and msg.get("from") == third["proxy"][GUEST]
    assert msg.text == "on my way"
    # Without a PIN (two PIN sessions): instructions, nothing relayed.
    reply = parse((await relay.sms(CUSTOMER, SHARED, "where are you?"))[1]).find("Message")
    assert reply is not None and reply.get("to") is None and "PIN" in (reply.text or "")
    assert len(await relay.interactions(ks, third["sid"])) == 1 and not await relay.interactions(
        ks, fourth["sid"]
    )

    # GUEST answers on their own proxy number: CUSTOMER gets it from the shared number, with the PIN in front.
    back = parse((await relay.sms(GUEST, third["proxy"][GUEST], "see you"))[1]).find("Message")
    assert back is not None and back.get("to") == CUSTOMER and back.get("from") == SHARED
    assert back.text == f"PIN {pin}: see you"

    # Once the fourth session closes, CUSTOMER has one PIN session: texts without a PIN reach it,
    # and a closed session's PIN reaches nobody.
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{fourth['sid']}", {"Status": "closed"})
    assert status == 200
    msg = parse((await relay.sms(CUSTOMER, SHARED, "5 minutes"))[1]).find("Message")
    assert msg is not None and msg.get("to") == GUEST and msg.text == "5 minutes"
    dial = parse((await relay.call(CUSTOMER, SHARED))[1]).find("Dial")  # recognised: no PIN asked
    assert dial is not None and dial.findtext("Number") == GUEST
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{third['sid']}", {"Status": "closed"})
    late = parse((await relay.sms(CUSTOMER, SHARED, f"{pin} hello?"))[1]).find("Message")
    assert late is None or late.get("to") is None  # the out-of-session reply at most, never relayed
    assert await relay.redis.scard(keys.pins(ks, CUSTOMER, SHARED)) == 0


async def test_strangers_never_connect_and_the_shared_number_is_never_given_out(relay: Relay) -> None:
    ks, _ = await _exhausted(relay)
    # COURIER holds no PIN on the shared number: a short message, never a Dial.
    xml = (await relay.call(COURIER, SHARED))[1]
    assert parse(xml).find("Dial") is None and parse(xml).find("Say") is not None
    text = parse((await relay.sms(COURIER, SHARED, "1234 hi"))[1]).find("Message")
    assert text is None or text.get("to") is None

    # ProxyIdentifier naming the shared number: 89006; FallbackNumber outside the Service: 89005.
    named = orjson.dumps({"Identifier": "+14155550111", "ProxyIdentifier": SHARED}).decode()
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", [("Participants", named)])
    assert status == 400 and body["code"] == 89006
    status, body = await relay.api("POST", f"/v1/Services/{ks}", {"FallbackNumber": "+14155550299"})
    assert status == 400 and body["code"] == 89005
    status, body = await relay.api("POST", "/v1/Services", {"UniqueName": "x", "FallbackNumber": SHARED})
    assert status == 400 and body["code"] == 89005
    status, body = await relay.api("POST", f"/v1/Services/{ks}", {"FallbackNumber": "not a number"})
    assert status == 400 and body["code"] != 500


def _call(relay: Relay, from_: str, to: str, sid: str) -> dict[str, str]:
    from relay_harness import call_params

    return call_params(relay.settings.twilio_account_sid, from_, to, sid=sid)


async def test_the_console_shows_a_participant_s_pin(relay: Relay) -> None:
    from test_console import _sign_in

    from relay.credentials import create_key

    ks, sessions = await _exhausted(relay)
    pin = (await _participant(relay, ks, sessions[2], CUSTOMER))["pin"]
    http, _ = await _sign_in(relay, *await create_key(relay.pg, "operator"))
    try:
        async with http.get(f"{relay.local}/console/services/{ks}/sessions/{sessions[2]['sid']}") as r:
            assert r.status == 200 and f"{SHARED} (PIN {pin})" in await r.text()
    finally:
        await http.close()
