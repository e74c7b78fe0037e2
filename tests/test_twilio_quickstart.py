"""Twilio's Proxy quickstart, as Twilio's own client runs it, against Maskline with only base_url
changed: Account SID + Auth Token, the Service fetched by its unique name, numbers added by their
PN SID from the account (the fake Twilio's IncomingPhoneNumbers), a session with two participants,
a message interaction (seen in the fake's Messages log), `.stream()` over several pages while
sessions are being created, and a missing unique name answered with Twilio's 80308. Sync and async."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from api_helpers import RunningApp, running_app
from fake_twilio import FakeTwilio
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

CUSTOMER, COURIER = "+14155550101", "+14155550102"
EARLIER_SESSIONS = 5  # with page_size=2: at least three pages


@pytest.fixture
async def app(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


def _numbers(fake: FakeTwilio) -> list[dict[str, Any]]:
    return [fake.numbers.add("+14155550201"), fake.numbers.add("+14155550202")]


def _check(result: dict[str, Any], settings, fake: FakeTwilio, pns: list[dict[str, Any]]) -> None:  # type: ignore[no-untyped-def]
    account = settings.twilio_account_sid
    assert result["by_name"] == result["service_sid"]
    assert [(n.sid, n.account_sid) for n in result["numbers"]] == [(pn["sid"], account) for pn in pns]
    assert all(n.capabilities.get("sms_outbound") for n in result["numbers"]), result["numbers"][
        0
    ].capabilities
    proxies = {p.identifier: p.proxy_identifier for p in result["participants"]}
    assert set(proxies) == {CUSTOMER, COURIER} and set(proxies.values()) <= {pn["phone_number"] for pn in pns}
    assert result["interaction"].participant_sid == result["participants"][0].sid
    sent = fake.messages
    assert len(sent) == 1 and sent[0]["Body"] == "Your order is on its way"
    assert (sent[0]["From"], sent[0]["To"]) == (proxies[CUSTOMER], CUSTOMER)
    streamed, before = result["streamed"], result["before"]
    assert len(streamed) == len(set(streamed)), "the stream showed a session twice"
    assert set(before) <= set(streamed), "the stream skipped a session that existed all along"
    assert result["closed"] == "closed"
    assert result["missing"] == (404, 80308)


async def test_quickstart_with_the_sync_client(app: RunningApp, settings, fake_twilio: FakeTwilio) -> None:
    pns = _numbers(fake_twilio)

    def quickstart() -> dict[str, Any]:
        client = Client(settings.twilio_account_sid, settings.twilio_auth_token)
        client.proxy.base_url = app.base  # the one line that changes
        service = client.proxy.v1.services.create(unique_name="food-delivery")
        by_name = client.proxy.v1.services("food-delivery").fetch()
        svc = client.proxy.v1.services(service.sid)
        numbers = [svc.phone_numbers.create(sid=pn["sid"]) for pn in pns]
        session = svc.sessions.create(unique_name="order-1")
        participants = [
            svc.sessions(session.sid).participants.create(identifier=CUSTOMER, friendly_name="Alice"),
            svc.sessions(session.sid).participants.create(identifier=COURIER, friendly_name="Bob"),
        ]
        interaction = (
            svc.sessions(session.sid)
            .participants(participants[0].sid)
            .message_interactions.create(body="Your order is on its way")
        )
        for i in range(EARLIER_SESSIONS - 1):
            svc.sessions.create(unique_name=f"order-{i + 2}")
        before = [s.sid for s in svc.sessions.list()]
        streamed = []
        for s in svc.sessions.stream(page_size=2):
            streamed.append(s.sid)
            if len(streamed) == 1:  # sessions created while the client reads page after page
                svc.sessions.create(unique_name="late-1")
                svc.sessions.create(unique_name="late-2")
        closed = client.proxy.v1.services("food-delivery").sessions("order-1").update(status="closed")
        try:
            svc.sessions("order-404").fetch()
            missing = (0, 0)
        except TwilioRestException as err:
            missing = (err.status, err.code)
        return {
            "service_sid": service.sid,
            "by_name": by_name.sid,
            "numbers": numbers,
            "participants": participants,
            "interaction": interaction,
            "before": before,
            "streamed": streamed,
            "closed": closed.status,
            "missing": missing,
        }

    _check(await asyncio.to_thread(quickstart), settings, fake_twilio, pns)


class HeaderAuthClient(AsyncTwilioHttpClient):
    """twilio's aiohttp client, sending Basic auth as a header: its `auth=` path makes aiohttp 3.14
    warn (BasicAuth is deprecated); the request is the same."""

    async def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Response:
        auth = kwargs.pop("auth", None)
        if auth is not None:
            kwargs["headers"] = {
                **(kwargs.get("headers") or {}),
                "Authorization": aiohttp.encode_basic_auth(*auth),
            }
        return await super().request(method, url, *args, **kwargs)


async def test_quickstart_with_the_async_client(app: RunningApp, settings, fake_twilio: FakeTwilio) -> None:
    pns = _numbers(fake_twilio)
    http = HeaderAuthClient()
    try:
        result = await _async_quickstart(
            app, Client(settings.twilio_account_sid, settings.twilio_auth_token, http_client=http), pns
        )
    finally:
        await http.close()
    _check(result, settings, fake_twilio, pns)


async def _async_quickstart(app: RunningApp, client: Client, pns: list[dict[str, Any]]) -> dict[str, Any]:
    client.proxy.base_url = app.base  # the one line that changes
    service = await client.proxy.v1.services.create_async(unique_name="food-delivery")
    by_name = await client.proxy.v1.services("food-delivery").fetch_async()
    svc = client.proxy.v1.services(service.sid)
    numbers = [await svc.phone_numbers.create_async(sid=pn["sid"]) for pn in pns]
    session = await svc.sessions.create_async(unique_name="order-1")
    participants = [
        await svc.sessions(session.sid).participants.create_async(identifier=CUSTOMER, friendly_name="Alice"),
        await svc.sessions(session.sid).participants.create_async(identifier=COURIER, friendly_name="Bob"),
    ]
    interaction = (
        await svc.sessions(session.sid)
        .participants(participants[0].sid)
        .message_interactions.create_async(body="Your order is on its way")
    )
    for i in range(EARLIER_SESSIONS - 1):
        await svc.sessions.create_async(unique_name=f"order-{i + 2}")
    before = [s.sid for s in await svc.sessions.list_async()]
    streamed = []
    async for s in await svc.sessions.stream_async(page_size=2):
        streamed.append(s.sid)
        if len(streamed) == 1:
            await svc.sessions.create_async(unique_name="late-1")
            await svc.sessions.create_async(unique_name="late-2")
    closed = await client.proxy.v1.services("food-delivery").sessions("order-1").update_async(status="closed")
    try:
        await svc.sessions("order-404").fetch_async()
        missing = (0, 0)
    except TwilioRestException as err:
        missing = (err.status, err.code)
    return {
        "service_sid": service.sid,
        "by_name": by_name.sid,
        "numbers": numbers,
        "participants": participants,
        "interaction": interaction,
        "before": before,
        "streamed": streamed,
        "closed": closed.status,
        "missing": missing,
    }
