"""The relay and the customer's endpoints: intercept, out-of-session (TwiML and auto-create) and
CallbackUrl, end to end with signed webhooks against real Redis and Postgres."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiohttp import web
from relay_harness import (
    COURIER,
    CUSTOMER,
    HOST,
    PROXY_A,
    PROXY_B,
    PROXY_C,
    Relay,
    message_of,
    parse,
    world,
)

# ------------------------------------------------------------------------------------------ intercept


async def test_intercept_403_blocks_and_anything_else_lets_through(relay: Relay) -> None:
    verdict = {"status": 403}
    seen: list[dict[str, str]] = []

    async def decide(request: web.Request) -> web.Response:
        seen.append(dict(await request.post()))
        return web.Response(status=verdict["status"])

    url = relay.fake.route("POST", "/intercept", decide)
    ks, sess = await world(relay, InterceptCallbackUrl=url)
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "blocked one")
    assert message_of(xml) is None
    assert seen[0]["interactionServiceSid"] == ks
    assert seen[0]["inboundParticipantSid"] == sess["participants"][CUSTOMER]
    ix = (await relay.interactions(ks, sess["sid"]))[0]
    assert ix["outbound_resource_status"] == "failed"

    verdict["status"] = 500
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "allowed one")
    assert message_of(xml).get("to") == COURIER

    verdict["status"] = 403
    _, xml = await relay.call(CUSTOMER, sess["proxy"][CUSTOMER])
    assert parse(xml).find("Dial") is None


async def test_intercept_timeout_lets_the_interaction_through(relay: Relay) -> None:
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response(status=403)

    url = relay.fake.route("POST", "/slow-intercept", slow)
    ks, sess = await world(relay, InterceptCallbackUrl=url)
    started = time.monotonic()
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    elapsed = time.monotonic() - started
    assert message_of(xml).get("to") == COURIER
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
    ks, sess = await world(relay, OutOfSessionCallbackUrl=url)
    await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "still there?")
    assert message_of(xml).text == "Call support on the app"
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
    msg = message_of(xml)
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
    assert (message_of(xml).get("to"), message_of(xml).get("from")) == (HOST, PROXY_C)


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
    ks, sess = await world(relay, CallbackUrl=url)
    started = time.monotonic()
    _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "hi")
    assert time.monotonic() - started < 1.0
    assert message_of(xml).get("to") == COURIER
    await asyncio.wait_for(arrived.wait(), 5)
    form = got[0]
    assert form["interactionServiceSid"] == ks and form["interactionSessionSid"] == sess["sid"]
    assert form["interactionType"] == "message" and orjson.loads(form["interactionData"]) == {"body": "hi"}
    assert form["inboundParticipantSid"] == sess["participants"][CUSTOMER]
    assert form["outboundParticipantSid"] == sess["participants"][COURIER]
    assert form["inboundResourceType"] == "message" and form["inboundResourceSid"].startswith("SM")
    assert form["outboundResourceStatus"] == "initiated"
