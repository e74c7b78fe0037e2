"""The Twilio Proxy v1 REST surface: the official twilio client against Maskline, auth, errors."""

from __future__ import annotations

import asyncio

import pytest
from api_helpers import RunningApp, running_app
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

CUSTOMER, COURIER = "+14155550101", "+14155550102"


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


def _client(api: RunningApp) -> Client:
    client = Client(api.key_sid, api.key_secret, account_sid="AC" + "7e57" * 8)
    client.proxy.base_url = api.base
    return client


async def test_official_twilio_client_drives_the_whole_api(api: RunningApp) -> None:
    def scenario() -> dict[str, object]:
        client = _client(api)
        service = client.proxy.v1.services.create(unique_name="deliveries", default_ttl=3600)
        fetched = client.proxy.v1.services(service.sid).fetch()
        updated = client.proxy.v1.services(service.sid).update(geo_match_level="country")
        numbers = [
            client.proxy.v1.services(service.sid).phone_numbers.create(phone_number=n)
            for n in ("+14155550201", "+14155550202")
        ]
        reserved = client.proxy.v1.services(service.sid).phone_numbers.create(
            phone_number="+14155550203", is_reserved=True
        )
        session = client.proxy.v1.services(service.sid).sessions.create(
            unique_name="order-1",
            participants=[{"Identifier": CUSTOMER, "FriendlyName": "Ann"}, {"Identifier": COURIER}],
        )
        participants = client.proxy.v1.services(service.sid).sessions(session.sid).participants.list()
        in_use = client.proxy.v1.services(service.sid).phone_numbers(numbers[0].sid).fetch().in_use
        closed = client.proxy.v1.services(service.sid).sessions(session.sid).update(status="closed")
        reopened = client.proxy.v1.services(service.sid).sessions(session.sid).update(status="in-progress")
        for i in range(7):
            client.proxy.v1.services(service.sid).sessions.create(unique_name=f"bulk-{i}")
        paged = list(client.proxy.v1.services(service.sid).sessions.stream(page_size=3))
        one = (
            client.proxy.v1.services(service.sid)
            .sessions(session.sid)
            .participants(participants[0].sid)
            .fetch()
        )
        client.proxy.v1.services(service.sid).sessions(session.sid).participants(participants[0].sid).delete()
        client.proxy.v1.services(service.sid).sessions(session.sid).delete()
        return {
            "service": service,
            "fetched": fetched,
            "updated": updated,
            "numbers": numbers,
            "reserved": reserved,
            "session": session,
            "participants": participants,
            "in_use": in_use,
            "closed": closed,
            "reopened": reopened,
            "paged": paged,
            "one": one,
        }

    r = await asyncio.to_thread(scenario)
    service, session = r["service"], r["session"]
    assert (
        service.sid.startswith("KS") and service.unique_name == "deliveries" and service.default_ttl == 3600
    )
    assert service.url == f"{api.base}/v1/Services/{service.sid}"
    assert service.links["sessions"] == f"{api.base}/v1/Services/{service.sid}/Sessions"
    assert r["fetched"].sid == service.sid and r["updated"].geo_match_level == "country"
    assert all(n.sid.startswith("PN") and n.is_reserved is False for n in r["numbers"])
    assert r["reserved"].is_reserved is True
    assert session.sid.startswith("KC") and session.status == "open" and session.ttl == 3600
    parts = {p.identifier: p for p in r["participants"]}
    assert set(parts) == {CUSTOMER, COURIER}
    assert {p.proxy_identifier for p in parts.values()} <= {"+14155550201", "+14155550202"}
    assert parts[CUSTOMER].friendly_name == "Ann" and parts[CUSTOMER].sid.startswith("KP")
    assert r["in_use"] >= 1
    assert (r["closed"].status, r["closed"].closed_reason) == ("closed", "api")
    assert r["reopened"].status == "in-progress"
    assert len(r["paged"]) == 8  # followed absolute next_page_url across 3 pages
    assert r["one"].identifier in parts


async def test_errors_reach_the_twilio_client_with_their_codes(api: RunningApp) -> None:
    def scenario() -> list[tuple[int, int]]:
        client = _client(api)
        service = client.proxy.v1.services.create(unique_name="errs")
        client.proxy.v1.services(service.sid).phone_numbers.create(phone_number="+14155550201")
        seen = []
        attempts = [
            lambda: client.proxy.v1.services(service.sid).sessions.create(
                participants=[{"Identifier": "+44 7400 123457"}]
            ),
            lambda: client.proxy.v1.services(service.sid).sessions.create(
                participants=[{"Identifier": "911"}]
            ),
            lambda: client.proxy.v1.services(service.sid).sessions.create(
                participants=[{"Identifier": "not a number"}]
            ),
            lambda: client.proxy.v1.services(service.sid).sessions("KC" + "0" * 32).fetch(),
            lambda: client.proxy.v1.services.create(unique_name="errs"),
            lambda: client.proxy.v1.services(service.sid).sessions.create(ttl=-5),
        ]
        for attempt in attempts:
            try:
                attempt()
            except TwilioRestException as err:
                seen.append((err.status, err.code))
        return seen

    assert await asyncio.to_thread(scenario) == [
        (400, 80203),
        (400, 89001),
        (400, 20422),
        (404, 20404),
        (409, 80602),
        (400, 20422),
    ]


async def test_wrong_or_missing_credentials_get_401(api: RunningApp) -> None:
    status, body = await api.call("GET", "/v1/Services", auth=False)
    assert status == 401 and body["code"] == 20003
    api.key_secret = "wrong"
    status, body = await api.call("GET", "/v1/Services")
    assert status == 401 and body["code"] == 20003


async def test_bad_input_gets_a_clear_4xx_and_writes_nothing(api: RunningApp) -> None:
    status, svc = await api.call("POST", "/v1/Services", {"UniqueName": "bad-input"})
    assert status == 201
    base = f"/v1/Services/{svc['sid']}"
    cases = [
        ("POST", "/v1/Services", {}, 400, 20422),
        ("POST", "/v1/Services", {"UniqueName": "x", "DefaultTtl": "soon"}, 400, 20422),
        ("POST", "/v1/Services", {"UniqueName": "y", "GeoMatchLevel": "planet"}, 400, 20422),
        ("POST", f"{base}/PhoneNumbers", {}, 400, 20422),
        ("POST", f"{base}/PhoneNumbers", {"PhoneNumber": "12345"}, 400, 20422),
        ("POST", f"{base}/Sessions", {"Participants": "{not json"}, 400, 20422),
        ("POST", f"{base}/Sessions", {"Participants": '{"FriendlyName": "no id"}'}, 400, 20422),
        ("POST", f"{base}/Sessions", {"DateExpiry": "tomorrow"}, 400, 20422),
        ("POST", f"{base}/Sessions", {"DateExpiry": "2001-01-01T00:00:00Z"}, 400, 20422),
        ("POST", f"{base}/Sessions", {"Mode": "telepathy"}, 400, 20422),
        ("POST", f"{base}/Sessions/KC{'0' * 32}/Participants", {"Identifier": "+14155550101"}, 404, 20404),
        ("GET", f"/v1/Services/KS{'0' * 32}", None, 404, 20404),
        ("GET", "/v1/Nothing", None, 404, 20404),
    ]
    for method, path, data, want_status, want_code in cases:
        status, body = await api.call(method, path, data)
        assert (status, body["code"]) == (want_status, want_code), (method, path, data, body)
        assert body["message"] and body["more_info"].endswith(str(want_code))
    status, listing = await api.call("GET", f"{base}/Sessions")
    assert listing["sessions"] == []


async def test_json_bodies_are_accepted(api: RunningApp) -> None:
    async with api.http.post(
        api.base + "/v1/Services",
        json={"UniqueName": "json-svc", "DefaultTtl": 60},
        headers=api.auth_headers,
    ) as resp:
        assert resp.status == 201
        assert (await resp.json())["default_ttl"] == 60


async def test_health_and_readiness(api: RunningApp) -> None:
    assert (await api.call("GET", "/healthz", auth=False))[0] == 200
    status, body = await api.call("GET", "/readyz", auth=False)
    assert status == 200 and body["redis"] == body["postgres"] == "ok"


async def test_key_scoped_to_one_service_cannot_see_another(api: RunningApp, pg) -> None:
    from relay.credentials import create_key

    _, a = await api.call("POST", "/v1/Services", {"UniqueName": "tenant-a"})
    _, b = await api.call("POST", "/v1/Services", {"UniqueName": "tenant-b"})
    api.key_sid, api.key_secret = await create_key(pg, "tenant-a", service_sids=[a["sid"]])
    assert (await api.call("GET", f"/v1/Services/{a['sid']}"))[0] == 200
    assert (await api.call("GET", f"/v1/Services/{b['sid']}"))[0] == 404
    _, listing = await api.call("GET", "/v1/Services")
    assert [s["sid"] for s in listing["services"]] == [a["sid"]]


def test_webhooks_carry_no_api_middleware_and_the_api_keeps_its_own(settings) -> None:
    """The webhooks are routes of an app without middleware; auth and the error boundary belong
    to the API's sub-app at /v1 (a webhook never waits on them)."""
    from aiohttp import web

    from maskline.server import create_app
    from relay.middleware import api_error_middleware, auth_middleware

    app = create_app(settings, background=False)
    assert tuple(app.middlewares) == ()
    webhooks = {r.resource.canonical for r in app.router.routes() if r.resource and r.method == "POST"}
    assert {"/twilio/sms", "/twilio/voice"} <= webhooks
    (api,) = [r for r in app.router.resources() if isinstance(r, web.PrefixedSubAppResource)]
    assert api.canonical == "/v1"
    assert tuple(api.get_info()["app"].middlewares) == (api_error_middleware, auth_middleware)
