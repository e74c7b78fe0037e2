"""The app under test on a real TCP port (so the signed public URL is the URL the test posts to),
an API key, and signed webhooks with every parameter Twilio sends, including those Maskline
ignores (the signature covers them all)."""

from __future__ import annotations

import base64
import secrets
import xml.etree.ElementTree as ET
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.asyncio as aioredis
from aiohttp import web
from fake_twilio import FakeTwilio
from signing import post_webhook

from core import keys
from core.settings import Settings
from maskline.server import create_app
from relay.credentials import create_key
from relay.state import RELAY

__all__ = ["Relay", "sms_params", "call_params", "parse", "world", "message_of", "events_of"]

# Valid US numbers: participants and pool numbers.
CUSTOMER = "+14155550101"
COURIER = "+14155550102"
HOST = "+12125550103"
GUEST = "+12125550104"
PROXY_A = "+14155550201"
PROXY_B = "+14155550202"
PROXY_C = "+14155550203"


def _geo(prefix: str) -> dict[str, str]:
    return {
        f"{prefix}City": "SAN FRANCISCO",
        f"{prefix}State": "CA",
        f"{prefix}Zip": "94105",
        f"{prefix}Country": "US",
    }


def sms_params(
    account_sid: str, from_: str, to: str, body: str, *, sid: str | None = None, media: tuple[str, ...] = ()
) -> dict[str, str]:
    sid = sid or "SM" + secrets.token_hex(16)
    params = {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": from_,
        "To": to,
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "MessagingServiceSid": "MG" + "ab" * 16,
        "NumSegments": "1",
        "NumMedia": str(len(media)),
        "ReferralNumMedia": "0",
        **_geo("From"),
        **_geo("To"),
    }
    for i, url in enumerate(media):
        params[f"MediaUrl{i}"] = url
        params[f"MediaContentType{i}"] = "image/jpeg"
    return params


def call_params(account_sid: str, from_: str, to: str, *, sid: str | None = None) -> dict[str, str]:
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "CallSid": sid or "CA" + secrets.token_hex(16),
        "CallStatus": "ringing",
        "CallToken": "%7B%22parentCallInfoToken%22%3A%22eyJ%22%7D",
        "Direction": "inbound",
        "From": from_,
        "To": to,
        "Caller": from_,
        "Called": to,
        "StirVerstat": "TN-Validation-Passed-A",
        **_geo("From"),
        **_geo("To"),
        **_geo("Caller"),
        **_geo("Called"),
    }


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


class Relay:
    def __init__(self, settings: Settings, redis: aioredis.Redis, pg: asyncpg.Pool, fake: FakeTwilio) -> None:
        self.settings = settings
        self.redis = redis
        self.pg = pg
        self.fake = fake
        self.runner: web.AppRunner | None = None
        self.http: aiohttp.ClientSession | None = None
        self.auth: dict[str, str] = {}

    @property
    def url(self) -> str:
        """Where Twilio reaches the app (what it signs); the tests' public URL is the app itself
        unless a test sets another one (behind a proxy)."""
        return self.settings.public_url

    @property
    def local(self) -> str:
        return f"http://{self.settings.host}:{self.settings.port}"

    async def start(self, *, redis: aioredis.Redis | None = None, audit_writer: bool = False) -> Relay:
        app = create_app(
            self.settings, redis=redis or self.redis, pg=self.pg, background=False, audit_writer=audit_writer
        )
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, self.settings.host, self.settings.port).start()
        self.http = aiohttp.ClientSession()
        sid, secret = await create_key(self.pg, "relay tests")
        self.auth = {"Authorization": "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()}
        return self

    async def answers_written(self) -> None:
        """Until the webhooks' answers so far are remembered in Redis (AnswerWriter: within a few
        ms; Twilio's retries come seconds later)."""
        assert self.runner is not None
        await self.runner.app[RELAY].answers.drain()

    async def stop(self) -> None:
        if self.http:
            await self.http.close()
        if self.runner:
            await self.runner.cleanup()

    # ---------------------------------------------------------------- REST API
    async def api(self, method: str, path: str, data: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        async with self.http.request(method, self.local + path, data=data, headers=self.auth) as resp:
            raw = await resp.read()
            return resp.status, (orjson.loads(raw) if raw else None)

    async def service(self, **params: Any) -> str:
        params.setdefault("UniqueName", "svc-" + secrets.token_hex(4))
        status, body = await self.api("POST", "/v1/Services", {k: str(v) for k, v in params.items()})
        assert status == 201, body
        ks = str(body["sid"])
        return ks

    async def numbers(self, ks: str, *numbers: str) -> None:
        for n in numbers:
            status, body = await self.api("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": n})
            assert status == 201, body

    async def update_service(self, ks: str, **params: Any) -> None:
        status, body = await self.api("POST", f"/v1/Services/{ks}", {k: str(v) for k, v in params.items()})
        assert status == 200, body

    async def session(self, ks: str, *identifiers: str, **params: Any) -> dict[str, Any]:
        """Creates a session; returns {sid, proxy: {identifier: proxy}, participants: {identifier: KP}}."""
        form: list[tuple[str, str]] = [(k, str(v)) for k, v in params.items()]
        for ident in identifiers:
            form.append(("Participants", orjson.dumps({"Identifier": ident}).decode()))
        status, body = await self.api("POST", f"/v1/Services/{ks}/Sessions", form)
        assert status == 201, body
        kc = body["sid"]
        status, parts = await self.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Participants")
        assert status == 200, parts
        return {
            "sid": kc,
            "proxy": {p["identifier"]: p["proxy_identifier"] for p in parts["participants"]},
            "participants": {p["identifier"]: p["sid"] for p in parts["participants"]},
        }

    async def interactions(self, ks: str, kc: str) -> list[dict[str, Any]]:
        status, body = await self.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions")
        assert status == 200, body
        return list(body["interactions"])

    # ---------------------------------------------------------------- webhooks
    async def post(
        self, path: str, params: dict[str, str], *, signed_url: str | None = None, token: str | None = None
    ) -> tuple[int, str]:
        assert self.http is not None
        resp = await post_webhook(
            self.http,
            self.local + path,
            params,
            token or self.settings.twilio_auth_token,
            signed_url=signed_url or self.url + path,
        )
        return resp.status, await resp.text()

    async def sms(self, from_: str, to: str, body: str = "hello", **kw: Any) -> tuple[int, str]:
        return await self.post(
            "/twilio/sms", sms_params(self.settings.twilio_account_sid, from_, to, body, **kw)
        )

    async def call(self, from_: str, to: str, **kw: Any) -> tuple[int, str]:
        return await self.post(
            "/twilio/voice", call_params(self.settings.twilio_account_sid, from_, to, **kw)
        )


async def world(relay: Relay, **service: object) -> tuple[str, dict[str, Any]]:
    """A Service with PROXY_A and PROXY_B and a session between CUSTOMER and COURIER."""
    ks = await relay.service(**service)
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    return ks, sess


def message_of(xml: str) -> ET.Element | None:
    root = parse(xml)
    assert root.tag == "Response"
    return root.find("Message")


async def events_of(redis: aioredis.Redis, ks: str) -> list[tuple[str, dict[str, Any]]]:
    entries = await redis.xrange(keys.events(ks))
    return [(f["type"], orjson.loads(f["data"])) for _, f in entries]
