"""Twilio's own ways in: the Account SID and Auth Token as full-access credentials, and Services and
Sessions addressed by UniqueName wherever Twilio takes their SID in a path."""

from __future__ import annotations

import dataclasses

import aiohttp
import pytest
from api_helpers import RunningApp, running_app

from core.settings import DEV_AUTH_TOKEN

CUSTOMER, COURIER = "+14155550101", "+14155550102"


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


async def _as(api: RunningApp, user: str, password: str, method: str, path: str, data=None):  # type: ignore[no-untyped-def]
    headers = {"Authorization": aiohttp.encode_basic_auth(user, password)}
    async with api.http.request(method, api.base + path, data=data, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_account_sid_and_auth_token_have_full_access(api: RunningApp, settings) -> None:
    account, token = settings.twilio_account_sid, settings.twilio_auth_token
    status, service = await _as(api, account, token, "POST", "/v1/Services", {"UniqueName": "acct"})
    assert status == 201 and service["account_sid"] == account
    status, number = await _as(
        api,
        account,
        token,
        "POST",
        f"/v1/Services/{service['sid']}/PhoneNumbers",
        {"PhoneNumber": "+14155550201"},
    )
    assert status == 201 and number["account_sid"] == account
    status, body = await _as(api, account, token, "GET", "/v1/Audit/Events")
    assert status == 200, body  # the audit permission too
    # API keys keep working beside it, with their own scope.
    status, listed = await api.call("GET", "/v1/Services")
    assert status == 200 and [s["sid"] for s in listed["services"]] == [service["sid"]]


async def test_a_wrong_token_or_another_account_is_401_20003(api: RunningApp, settings) -> None:
    account, token = settings.twilio_account_sid, settings.twilio_auth_token
    for user, password in (
        (account, token + "x"),
        (account, token[:-1]),
        ("AC" + "1" * 32, token),
        (account, ""),
    ):
        status, body = await _as(api, user, password, "GET", "/v1/Services")
        assert (status, body["code"]) == (401, 20003)


async def test_the_built_in_development_token_never_opens_the_api(settings, redis, pg) -> None:
    dev = dataclasses.replace(settings, twilio_auth_token=DEV_AUTH_TOKEN)
    async with running_app(dev, redis, pg) as api:
        status, body = await _as(api, dev.twilio_account_sid, DEV_AUTH_TOKEN, "GET", "/v1/Services")
    assert (status, body["code"]) == (401, 20003)


async def test_services_and_sessions_answer_to_their_unique_names(api: RunningApp) -> None:
    status, service = await api.call("POST", "/v1/Services", {"UniqueName": "food delivery"})
    ks = service["sid"]
    assert status == 201
    await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": "+14155550201"})
    by_name = "/v1/Services/food%20delivery"
    status, fetched = await api.call("GET", by_name)
    assert status == 200 and fetched["sid"] == ks and fetched["url"].endswith(f"/v1/Services/{ks}")
    status, updated = await api.call("POST", by_name, {"DefaultTtl": "600"})
    assert status == 200 and updated["default_ttl"] == 600

    status, session = await api.call("POST", f"{by_name}/Sessions", {"UniqueName": "order-42"})
    assert status == 201 and session["service_sid"] == ks
    order = f"{by_name}/Sessions/order-42"
    status, fetched = await api.call("GET", order)
    assert status == 200 and fetched["sid"] == session["sid"]
    status, part = await api.call("POST", f"{order}/Participants", {"Identifier": CUSTOMER})
    assert status == 201 and part["session_sid"] == session["sid"]
    status, parts = await api.call("GET", f"{order}/Participants")
    assert [p["sid"] for p in parts["participants"]] == [part["sid"]]
    status, closed = await api.call("POST", order, {"Status": "closed"})
    assert status == 200 and closed["status"] == "closed"
    assert (await api.call("DELETE", order))[0] == 204

    status, body = await api.call("GET", f"{by_name}/Sessions/order-42")
    assert (status, body["code"]) == (404, 80308) and "order-42" in body["message"]
    status, body = await api.call("GET", "/v1/Services/no-such-service")
    assert (status, body["code"]) == (404, 20404)


async def test_a_scoped_key_cannot_reach_another_services_name(api: RunningApp, pg) -> None:
    from relay.credentials import create_key

    _, mine = await api.call("POST", "/v1/Services", {"UniqueName": "mine"})
    await api.call("POST", "/v1/Services", {"UniqueName": "theirs"})
    sid, secret = await create_key(pg, "scoped", service_sids=[mine["sid"]])
    assert (await _as(api, sid, secret, "GET", "/v1/Services/mine"))[0] == 200
    status, body = await _as(api, sid, secret, "GET", "/v1/Services/theirs")
    assert (status, body["code"]) == (404, 20404)
