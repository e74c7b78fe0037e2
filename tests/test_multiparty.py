"""Sessions of more than two (MaxParticipants, a Maskline extension): a text reaches every other
participant from their own proxy number, prefixed with the sender's name, one interaction per
leg; a call reaches the first other participant to have joined; Twilio's 80609 stays the default."""

from __future__ import annotations

import orjson
from relay_harness import COURIER, CUSTOMER, HOST, PROXY_A, PROXY_B, PROXY_C, Relay, events_of, parse

RESTAURANT = HOST


async def _three(relay: Relay, **service: object) -> tuple[str, dict]:
    ks = await relay.service(MaxParticipants=3, **service)
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)
    form = [
        ("Participants", orjson.dumps({"Identifier": i, "FriendlyName": n}).decode())
        for i, n in ((CUSTOMER, "Ana"), (COURIER, "Bo"), (RESTAURANT, "Pizzeria"))
    ]
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
    assert status == 201, body
    status, parts = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{body['sid']}/Participants")
    proxy = {p["identifier"]: p["proxy_identifier"] for p in parts["participants"]}
    return ks, {"sid": body["sid"], "proxy": proxy}


async def test_a_text_in_a_three_party_session_reaches_both_others_from_their_proxy_numbers(
    relay: Relay,
) -> None:
    ks, sess = await _three(relay)
    proxy = sess["proxy"]
    status, xml = await relay.sms(COURIER, proxy[COURIER], "5 minutes away", sid="SM" + "ab" * 16)
    assert status == 200
    sent = {m.get("to"): (m.get("from"), m.text) for m in parse(xml).findall("Message")}
    assert sent == {
        CUSTOMER: (proxy[CUSTOMER], "[Bo] 5 minutes away"),
        RESTAURANT: (proxy[RESTAURANT], "[Bo] 5 minutes away"),
    }
    # One interaction per leg, each with its own status callback.
    callbacks = {m.get("to"): m.get("statusCallback") for m in parse(xml).findall("Message")}
    assert len(set(callbacks.values())) == 2
    interactions = await relay.interactions(ks, sess["sid"])
    assert len(interactions) == 2
    legs = {i["outbound_participant_sid"] for i in interactions}
    assert len(legs) == 2
    events = [d for t, d in await events_of(relay.redis, ks) if t == "interaction.created"]
    assert sorted(d["outbound_identifier"] for d in events) == sorted([CUSTOMER, RESTAURANT])

    # Twilio's retry gets both messages again, and nothing is recorded twice.
    status, again = await relay.sms(COURIER, proxy[COURIER], "5 minutes away", sid="SM" + "ab" * 16)
    assert parse(again).findall("Message") and len(await relay.interactions(ks, sess["sid"])) == 2

    # A leg's status callback updates that leg only.
    leg = callbacks[RESTAURANT]
    assert leg is not None
    await relay.post(
        leg.removeprefix(relay.url),
        {
            "MessageSid": "SM" + "cd" * 16,
            "MessageStatus": "delivered",
            "AccountSid": relay.settings.twilio_account_sid,
        },
    )
    statuses = {i["outbound_resource_status"] for i in await relay.interactions(ks, sess["sid"])}
    assert statuses == {"delivered", "initiated"}


async def test_a_call_dials_the_first_other_participant_and_limits_hold(relay: Relay) -> None:
    ks, sess = await _three(relay, NamePrefix="false")
    proxy = sess["proxy"]
    dial = parse((await relay.call(RESTAURANT, proxy[RESTAURANT]))[1]).find("Dial")
    assert (
        dial is not None and dial.get("callerId") == proxy[CUSTOMER] and dial.findtext("Number") == CUSTOMER
    )
    # No prefix when the Service turns it off.
    texts = parse((await relay.sms(CUSTOMER, proxy[CUSTOMER], "hi all"))[1]).findall("Message")
    assert [m.text for m in texts] == ["hi all", "hi all"]

    # A fourth participant is refused (80609) at this Service's limit; nothing added.
    status, body = await relay.api(
        "POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants", {"Identifier": "+12125550199"}
    )
    assert status == 400 and body["code"] == 80609 and "MaxParticipants" in body["message"]
    status, bad = await relay.api("POST", f"/v1/Services/{ks}", {"MaxParticipants": "x"})
    assert status == 400 and bad["code"] == 20422


async def test_participants_join_and_leave_mid_session_and_two_stays_twilios_default(relay: Relay) -> None:
    ks = await relay.service(MaxParticipants=3)
    await relay.numbers(ks, PROXY_A, PROXY_B, PROXY_C)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    status, added = await relay.api(
        "POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants", {"Identifier": RESTAURANT}
    )
    assert status == 201
    texts = parse((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "order ready?"))[1]).findall("Message")
    assert sorted(m.get("to") for m in texts) == sorted([COURIER, RESTAURANT])
    status, _ = await relay.api(
        "DELETE", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{added['sid']}"
    )
    assert status == 204
    texts = parse((await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "never mind"))[1]).findall("Message")
    assert [m.get("to") for m in texts] == [COURIER] and texts[0].text == "never mind"
    types = [t for t, _ in await events_of(relay.redis, ks)]
    assert "participant.added" in types and "participant.removed" in types

    # Without MaxParticipants: Twilio's rule, 80609 for a third.
    plain = await relay.service()
    form = [
        ("Participants", orjson.dumps({"Identifier": i}).decode()) for i in (CUSTOMER, COURIER, RESTAURANT)
    ]
    status, body = await relay.api("POST", f"/v1/Services/{plain}/Sessions", form)
    assert status == 400 and body["code"] == 80609
