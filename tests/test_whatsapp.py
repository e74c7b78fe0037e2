"""WhatsApp participants ("whatsapp:+E164", Twilio's channel address): a WhatsApp-capable proxy
number, relays WhatsApp <-> SMS with the right `to`/`from` forms, WhatsApp's 24-hour window
(63016 outside it, templates with ContentSid allowed), no calls to a WhatsApp participant."""

from __future__ import annotations

import asyncio
import time

import orjson
from relay_harness import COURIER, CUSTOMER, HOST, PROXY_A, PROXY_B, Relay, events_of, parse

from core import keys
from relay.scheduler import Scheduler
from relay.state import RELAY, SCHEDULED

WA_CUSTOMER = "whatsapp:" + CUSTOMER
WA_HOST = "whatsapp:" + HOST
TEMPLATE = "HX" + "ab" * 16


async def _world(relay: Relay) -> tuple[str, dict]:
    """PROXY_A texts and calls; PROXY_B is also a WhatsApp sender. A WhatsApp customer and an SMS courier."""
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A)
    status, body = await relay.api(
        "POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": PROXY_B, "WhatsApp": "true"}
    )
    assert status == 201 and body["capabilities"]["whatsapp"] is True
    return ks, await relay.session(ks, WA_CUSTOMER, COURIER)


async def test_whatsapp_and_sms_relay_both_ways_inside_the_window(relay: Relay) -> None:
    ks, sess = await _world(relay)
    assert sess["proxy"][WA_CUSTOMER] == PROXY_B  # the only number that can carry WhatsApp
    courier_proxy = sess["proxy"][COURIER]

    # Before the customer ever wrote, the courier's text cannot go out on WhatsApp (Twilio would
    # refuse it: 63016): the courier is told, the interaction is on record as not relayed.
    reply = parse((await relay.sms(COURIER, courier_proxy, "I am outside"))[1]).find("Message")
    assert reply is not None and reply.get("to") is None and "24 hours" in (reply.text or "")
    [first] = await relay.interactions(ks, sess["sid"])
    assert first["outbound_resource_status"] == "failed"
    events = [d for t, d in await events_of(relay.redis, ks) if t == "interaction.created"]
    assert events[-1]["outcome"] == "outside_window"

    # WhatsApp -> SMS: Twilio posts From and To as channel addresses; the courier gets an SMS.
    xml = (await relay.sms(WA_CUSTOMER, "whatsapp:" + PROXY_B, "which door?"))[1]
    msg = parse(xml).find("Message")
    assert msg is not None and msg.get("to") == COURIER and msg.get("from") == courier_proxy
    assert msg.text == "which door?"
    assert await relay.redis.exists(keys.whatsapp_window(ks, WA_CUSTOMER, PROXY_B))

    # SMS -> WhatsApp, now inside the window: both sides in the whatsapp: form.
    msg = parse((await relay.sms(COURIER, courier_proxy, "the blue one"))[1]).find("Message")
    assert msg is not None and msg.get("to") == WA_CUSTOMER and msg.get("from") == "whatsapp:" + PROXY_B
    assert msg.text == "the blue one"

    # A proactive free-form message inside the window goes out on WhatsApp too.
    kp = sess["participants"][WA_CUSTOMER]
    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions"
    status, body = await relay.api("POST", path, {"Body": "Your courier is 5 minutes away"})
    assert status == 201, body
    sent = relay.fake.requests[-1].form
    assert sent["To"] == WA_CUSTOMER and sent["From"] == "whatsapp:" + PROXY_B

    # Calls never reach a WhatsApp participant: the courier hears that texts only go through.
    call = parse((await relay.call(COURIER, courier_proxy))[1])
    assert call.find("Dial") is None and "text messages" in (call.findtext("Say") or "")

    # STOP on WhatsApp works as on SMS.
    await relay.sms(WA_CUSTOMER, "whatsapp:" + PROXY_B, "STOP")
    status, body = await relay.api("POST", path, {"Body": "still there?"})
    assert status == 400 and body["code"] == 21610


async def test_outside_the_window_free_form_gets_63016_and_a_template_goes_out(relay: Relay) -> None:
    ks, _ = await _world(relay)
    sess = await relay.session(ks, WA_HOST, CUSTOMER)  # the host never wrote on WhatsApp
    kp = sess["participants"][WA_HOST]
    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{kp}/MessageInteractions"
    before = len(relay.fake.requests)

    status, body = await relay.api("POST", path, {"Body": "Your booking is tomorrow at 10"})
    assert status == 400 and body["code"] == 63016 and "ContentSid" in body["message"]
    assert len(relay.fake.requests) == before  # nothing sent
    assert await relay.interactions(ks, sess["sid"]) == []  # nothing recorded but the audit event
    refused = [d for t, d in await events_of(relay.redis, ks) if t == "message.refused"]
    assert refused and refused[-1]["code"] == 63016

    variables = orjson.dumps({"1": "tomorrow", "2": "10:00"}).decode()
    status, body = await relay.api("POST", path, {"ContentSid": TEMPLATE, "ContentVariables": variables})
    assert status == 201, body
    sent = relay.fake.requests[-1].form
    assert sent["ContentSid"] == TEMPLATE and orjson.loads(sent["ContentVariables"]) == {
        "1": "tomorrow",
        "2": "10:00",
    }
    assert "Body" not in sent and sent["To"] == WA_HOST and sent["From"] == "whatsapp:" + PROXY_B

    # A template can be scheduled too (docs/scheduled.md): it keeps its ContentSid.
    later = {"ContentSid": TEMPLATE, "SendAt": str(int(time.time()) + 3600)}
    status, body = await relay.api("POST", path, later)
    assert status == 201 and body["status"] == "scheduled" and body["content_sid"] == TEMPLATE

    # A free-form one scheduled for the host fails when due: the window is still closed.
    soon = {"Body": "see you", "SendAt": f"{time.time() + 1.2:.3f}"}
    status, free = await relay.api("POST", path, soon)
    assert status == 201 and free["status"] == "scheduled"
    await asyncio.sleep(1.3)
    assert relay.runner is not None
    app = relay.runner.app
    assert await Scheduler(app[RELAY], app[SCHEDULED]).run_once() == 1
    status, done = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages/{free['sid']}"
    )
    assert done["status"] == "failed" and done["reason"] == "outside_window_63016"

    status, body = await relay.api("POST", path, {"ContentSid": "HXnope"})
    assert status == 400 and body["code"] == 20422 and "ContentSid" in body["message"]
    status, body = await relay.api("POST", path, {"ContentSid": TEMPLATE, "ContentVariables": "[1]"})
    assert status == 400 and "JSON object" in body["message"]


async def test_whatsapp_participants_need_a_whatsapp_number_and_blocks_reach_them(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A)
    form = [("Participants", orjson.dumps({"Identifier": i}).decode()) for i in (WA_CUSTOMER, COURIER)]
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
    assert status == 400 and body["code"] == 80203 and "WhatsApp" in body["message"]

    named = orjson.dumps({"Identifier": WA_CUSTOMER, "ProxyIdentifier": PROXY_A}).decode()
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", [("Participants", named)])
    assert status == 400 and body["code"] == 89007

    # A person on SMS and on WhatsApp are two identifiers (two pairs), and blocking the number blocks both.
    status, body = await relay.api(
        "POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": PROXY_B, "WhatsApp": "true"}
    )
    assert status == 201
    both = await relay.session(ks, WA_CUSTOMER, CUSTOMER)
    assert both["proxy"][WA_CUSTOMER] == PROXY_B
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Blocked", {"Identifier": HOST})
    assert status == 201
    form = [("Participants", orjson.dumps({"Identifier": i}).decode()) for i in (WA_HOST, COURIER)]
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
    assert status == 400 and body["code"] == 89003
