"""The Twilio account's own numbers (`IncomingPhoneNumbers`, REST API 2010-04-01), async: list them
page by page, fetch one by its PN sid, and point its webhooks at Maskline. Retries 429 and 5xx like
relay/outbound.py, and sets HTTP Basic (AccountSid:AuthToken) by hand in the Authorization header
for the same reason.

    account = TwilioAccount(http, api_url=..., account_sid="AC...", auth_token="...")
    async for page in account.pages():             # GET .../IncomingPhoneNumbers.json?PageSize=100
        ...                                        # then each next_page_uri until it is null
    number = await account.fetch("PN...")          # 80301 (404) when the account has no such number
    await account.configure(number.sid, Webhooks.for_public_url(settings.public_url))
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from core.errors import InvalidParameter, MasklineError, NotFound
from pool.registry import PN_SID, proxy_capabilities
from relay.outbound import TwilioRefused, TwilioUnavailable, twilio_request

__all__ = [
    "TwilioAccount",
    "IncomingNumber",
    "Webhooks",
    "TwilioAccountError",
    "IncomingNumberNotFound",
    "MAX_PAGE_SIZE",
]

log = logging.getLogger("maskline.twilio_account")

API_VERSION: Final = "2010-04-01"
MAX_PAGE_SIZE: Final = 1000  # Twilio's limit for PageSize
# A runaway next_page_uri (a server that never says null) stops here: 10M numbers at 1,000 a page.
MAX_PAGES: Final = 10_000


class TwilioAccountError(MasklineError):
    """Twilio's REST API refused the request (bad credentials...) or stayed unavailable: for an API
    caller a dependency outage, 503. `twilio_code` / `twilio_status` keep what Twilio said."""

    code = 20503
    status = 503

    def __init__(self, message: str, *, twilio_code: int | None = None, twilio_status: int | None = None):
        super().__init__(message)
        self.twilio_code = twilio_code
        self.twilio_status = twilio_status


class IncomingNumberNotFound(NotFound):
    """The account owns no IncomingPhoneNumber with this sid: Twilio Proxy's 80301
    ("Phone Number SID is not associated with the Account SID")."""

    code = 80301
    status = 404


@dataclass(frozen=True)
class IncomingNumber:
    """The fields of an IncomingPhoneNumber that Maskline reads; `resource` is Twilio's whole JSON."""

    sid: str
    phone_number: str
    friendly_name: str
    capabilities: dict[str, bool]  # Twilio's {voice, sms, mms, fax}
    sms_url: str
    sms_method: str
    voice_url: str
    voice_method: str
    status_callback: str
    status_callback_method: str
    sms_application_sid: str
    voice_application_sid: str
    trunk_sid: str
    resource: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncomingNumber:
        def text(key: str) -> str:
            value = data.get(key)
            return "" if value is None else str(value)

        raw_caps = data.get("capabilities") or {}
        caps = {str(k).lower(): v is True for k, v in raw_caps.items()} if isinstance(raw_caps, dict) else {}
        return cls(
            sid=text("sid"),
            phone_number=text("phone_number"),
            friendly_name=text("friendly_name"),
            capabilities=caps,
            sms_url=text("sms_url"),
            sms_method=text("sms_method"),
            voice_url=text("voice_url"),
            voice_method=text("voice_method"),
            status_callback=text("status_callback"),
            status_callback_method=text("status_callback_method"),
            sms_application_sid=text("sms_application_sid"),
            voice_application_sid=text("voice_application_sid"),
            trunk_sid=text("trunk_sid"),
            resource=dict(data),
        )

    @property
    def proxy_capabilities(self) -> dict[str, bool]:
        """The Proxy PhoneNumber `capabilities` object for this number."""
        return proxy_capabilities(self.capabilities)

    @property
    def capability_names(self) -> list[str]:
        return [c for c in ("voice", "sms", "mms", "fax") if self.capabilities.get(c)]


@dataclass(frozen=True)
class Webhooks:
    """Where a pool number's traffic must go (docs/relay.md, "Twilio console"): texts to
    /twilio/sms and calls to /twilio/voice, both POST. The number's own call StatusCallback stays
    empty: Maskline sets per-call and per-message callbacks (with the Service and Interaction in
    the query) in the TwiML it answers, and /twilio/status/call ignores a callback without them."""

    sms_url: str
    voice_url: str
    status_callback: str = ""

    @classmethod
    def for_public_url(cls, public_url: str) -> Webhooks:
        base = public_url.rstrip("/")
        return cls(sms_url=f"{base}/twilio/sms", voice_url=f"{base}/twilio/voice")

    def configured(self, number: IncomingNumber) -> bool:
        """The number already sends its traffic here, exactly (nothing to update)."""
        return (
            number.sms_url == self.sms_url
            and number.sms_method.upper() == "POST"
            and number.voice_url == self.voice_url
            and number.voice_method.upper() == "POST"
            and number.status_callback == self.status_callback
            and (not number.status_callback or number.status_callback_method.upper() == "POST")
            # An application sid makes Twilio ignore the number's own URLs.
            and not number.sms_application_sid
            and not number.voice_application_sid
        )

    def form(self, number: IncomingNumber | None = None) -> list[tuple[str, str]]:
        """The update's form parameters; an application sid the number has is cleared, or Twilio
        would go on ignoring SmsUrl / VoiceUrl."""
        form = [
            ("SmsUrl", self.sms_url),
            ("SmsMethod", "POST"),
            ("VoiceUrl", self.voice_url),
            ("VoiceMethod", "POST"),
            ("StatusCallback", self.status_callback),
            ("StatusCallbackMethod", "POST"),
        ]
        if number is not None and number.sms_application_sid:
            form.append(("SmsApplicationSid", ""))
        if number is not None and number.voice_application_sid:
            form.append(("VoiceApplicationSid", ""))
        return form


class TwilioAccount:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        api_url: str,
        account_sid: str,
        auth_token: str,
        attempts: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 15.0,
        give_up_s: float | None = None,
    ) -> None:
        """`timeout_s` bounds one HTTP request, `give_up_s` (if set) one call with its retries:
        an API request that looks a number up must answer within its own deadline."""
        self.http = http
        self.api_url = api_url.rstrip("/")
        self.account_sid = account_sid
        self.base = f"{self.api_url}/{API_VERSION}/Accounts/{account_sid}/IncomingPhoneNumbers"
        token = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.give_up_s = give_up_s

    async def pages(
        self, *, page_size: int = 100, phone_number: str | None = None
    ) -> AsyncIterator[list[IncomingNumber]]:
        """Every page of the account's numbers, following `next_page_uri` (relative to the API
        base) until it is null. `phone_number` is Twilio's PhoneNumber filter (a whole or partial
        number; `*` matches any digit)."""
        query: dict[str, str | int] = {"PageSize": max(1, min(page_size, MAX_PAGE_SIZE))}
        if phone_number:
            query["PhoneNumber"] = phone_number
        url: str | None = f"{self.base}.json?{urlencode(query)}"
        for _ in range(MAX_PAGES):
            if url is None:
                return
            payload = await self._request("GET", url, what="list IncomingPhoneNumbers")
            items = payload.get("incoming_phone_numbers")
            if not isinstance(items, list):
                raise TwilioAccountError(
                    "Twilio's IncomingPhoneNumbers page had no incoming_phone_numbers list"
                )
            yield [IncomingNumber.from_json(item) for item in items if isinstance(item, dict)]
            next_uri = payload.get("next_page_uri")
            url = self._absolute(next_uri) if next_uri else None
        raise TwilioAccountError(f"Twilio's IncomingPhoneNumbers listing did not end after {MAX_PAGES} pages")

    async def all_numbers(
        self, *, page_size: int = 100, phone_number: str | None = None
    ) -> list[IncomingNumber]:
        return [n async for page in self.pages(page_size=page_size, phone_number=phone_number) for n in page]

    async def fetch(self, sid: str) -> IncomingNumber:
        """One number by its PN sid. IncomingNumberNotFound (80301) when the account has none."""
        self._check_sid(sid)
        return IncomingNumber.from_json(
            await self._request(
                "GET", f"{self.base}/{sid}.json", what=f"fetch IncomingPhoneNumber {sid}", sid=sid
            )
        )

    async def configure(
        self, sid: str, webhooks: Webhooks, number: IncomingNumber | None = None
    ) -> IncomingNumber:
        """Point the number's SmsUrl / VoiceUrl at Maskline (POST), clear its StatusCallback; the
        updated resource. `number` (its current state) lets an application sid be cleared too."""
        self._check_sid(sid)
        return IncomingNumber.from_json(
            await self._request(
                "POST",
                f"{self.base}/{sid}.json",
                form=webhooks.form(number),
                what=f"update IncomingPhoneNumber {sid}",
                sid=sid,
            )
        )

    def _check_sid(self, sid: str) -> None:
        # Never put anything but a PN sid in the URL path.
        if not PN_SID.fullmatch(sid):
            raise InvalidParameter(f"Sid {sid!r} is not a phone number sid (PN followed by 32 hex digits)")

    def _absolute(self, uri: str) -> str:
        """Twilio's *_uri fields are paths relative to the API base (`/2010-04-01/...`)."""
        uri = str(uri)
        if uri.startswith(("http://", "https://")):
            # Never send the account's credentials anywhere but the API base.
            if not uri.startswith(self.api_url + "/"):
                raise TwilioAccountError(f"Twilio's next_page_uri points outside {self.api_url}: {uri}")
            return uri
        return self.api_url + ("" if uri.startswith("/") else "/") + uri

    async def _request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        form: list[tuple[str, str]] | None = None,
        sid: str | None = None,
    ) -> dict[str, Any]:
        """Twilio's JSON. 404 on a number's own URL (`sid`): IncomingNumberNotFound; another 4xx:
        TwilioAccountError at once; 429 / 5xx / network errors: retried, then TwilioAccountError."""
        try:
            async with asyncio.timeout(self.give_up_s):
                return await self._attempts(method, url, what=what, form=form, sid=sid)
        except TimeoutError:
            raise TwilioAccountError(
                f"Twilio's API did not answer within {self.give_up_s:g} s, could not {what}; retry later"
            ) from None

    async def _attempts(
        self, method: str, url: str, *, what: str, form: list[tuple[str, str]] | None, sid: str | None
    ) -> dict[str, Any]:
        try:
            return await twilio_request(
                self.http,
                method,
                url,
                form=form,
                headers=self.headers,
                request_timeout=self.timeout,
                attempts=self.attempts,
                backoff_s=self.backoff_s,
                describe=what,
            )
        except TwilioRefused as err:
            if err.status == 404 and sid is not None:
                raise IncomingNumberNotFound(
                    f"Phone Number SID {sid} is not associated with the Account SID {self.account_sid}"
                ) from None
            raise TwilioAccountError(
                f"Twilio refused to {what}: HTTP {err.status} ({err.code} {err.message})",
                twilio_code=err.code,
                twilio_status=err.status,
            ) from None
        except TwilioUnavailable as err:
            raise TwilioAccountError(
                f"Twilio's API stayed unavailable, could not {what} ({err.last}); retry later"
            ) from None
