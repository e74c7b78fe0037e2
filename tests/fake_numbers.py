"""The fake Twilio account's IncomingPhoneNumbers (served by tests/fake_twilio.py).

    fake.numbers.seed(250)                      # +14155550000 ... +14155550249, voice+sms+mms
    fake.numbers.seed(20, prefix="+1650555")    # another area code
    fake.numbers.add("+14155550100", sms=False)  # one number, its capabilities

List pages are shaped like Twilio's (`incoming_phone_numbers`, `page`, `page_size`, `start`, `end`,
`uri`, `first_page_uri`, `previous_page_uri`, `next_page_uri`, every *_uri relative to the API
base); PageSize (default 50, at most 1000), Page and the PhoneNumber filter (partial numbers, `*`
for any digit) are honoured. An unknown sid gets Twilio's 404 (20404) body; a POST to a number
applies its fields (SmsUrl, VoiceUrl, StatusCallback, their methods, application sids...).
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

__all__ = ["IncomingNumbers", "NUMBERS_LIST_PATH", "NUMBER_PATH"]

NUMBERS_LIST_PATH = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/IncomingPhoneNumbers\.json$")
NUMBER_PATH = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/IncomingPhoneNumbers/([^/]+)\.json$")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# Update parameter -> resource field (what Twilio's IncomingPhoneNumber update accepts).
UPDATABLE = {
    "FriendlyName": "friendly_name",
    "SmsUrl": "sms_url",
    "SmsMethod": "sms_method",
    "SmsFallbackUrl": "sms_fallback_url",
    "SmsFallbackMethod": "sms_fallback_method",
    "SmsApplicationSid": "sms_application_sid",
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "VoiceFallbackUrl": "voice_fallback_url",
    "VoiceFallbackMethod": "voice_fallback_method",
    "VoiceApplicationSid": "voice_application_sid",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "TrunkSid": "trunk_sid",
}
METHOD_FIELDS = {
    "SmsMethod",
    "SmsFallbackMethod",
    "VoiceMethod",
    "VoiceFallbackMethod",
    "StatusCallbackMethod",
}


def _now() -> str:
    return format_datetime(datetime.now(UTC), usegmt=True)  # Twilio dates are RFC 2822


def _friendly(e164: str) -> str:
    """Twilio's default FriendlyName of a NANP number: (415) 555-0100."""
    if e164.startswith("+1") and len(e164) == 12:
        return f"({e164[2:5]}) {e164[5:8]}-{e164[8:]}"
    return e164


class IncomingNumbers:
    def __init__(self, account_sid: str) -> None:
        self.account_sid = account_sid
        self.by_sid: dict[str, dict[str, Any]] = {}  # insertion order is the listing order

    # -------------------------------------------------------------- seeding

    def add(
        self,
        phone_number: str,
        *,
        voice: bool = True,
        sms: bool = True,
        mms: bool = True,
        fax: bool = False,
        sid: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One number of the account; `fields` override resource fields (e.g. sms_url=...)."""
        sid = sid or "PN" + secrets.token_hex(16)
        now = _now()
        uri = f"/2010-04-01/Accounts/{self.account_sid}/IncomingPhoneNumbers/{sid}.json"
        resource: dict[str, Any] = {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": "2010-04-01",
            "beta": False,
            "bundle_sid": None,
            "capabilities": {"voice": voice, "sms": sms, "mms": mms, "fax": fax},
            "date_created": now,
            "date_updated": now,
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "emergency_status": "Inactive",
            "friendly_name": _friendly(phone_number),
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": phone_number,
            "sid": sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": "POST",
            "sms_url": "",
            "status": "in-use",
            "status_callback": "",
            "status_callback_method": "POST",
            "subresource_uris": {"assigned_add_ons": uri.replace(".json", "/AssignedAddOns.json")},
            "trunk_sid": None,
            "uri": uri,
            "voice_application_sid": None,
            "voice_caller_id_lookup": False,
            "voice_fallback_method": "POST",
            "voice_fallback_url": None,
            "voice_method": "POST",
            "voice_receive_mode": "voice",
            "voice_url": None,
        }
        resource.update(fields)
        self.by_sid[sid] = resource
        return resource

    def seed(
        self, count: int, *, prefix: str = "+1415555", start: int = 0, **caps: bool
    ) -> list[dict[str, Any]]:
        """`count` numbers prefix + 4 digits from `start` (+1415555XXXX: valid US numbers)."""
        return [self.add(f"{prefix}{start + i:04d}", **caps) for i in range(count)]

    def get(self, sid: str) -> dict[str, Any] | None:
        return self.by_sid.get(sid)

    def by_number(self, phone_number: str) -> dict[str, Any] | None:
        return next((r for r in self.by_sid.values() if r["phone_number"] == phone_number), None)

    # -------------------------------------------------------------- serving

    def list_page(self, path: str, query: dict[str, str]) -> web.Response:
        try:
            size = min(max(int(query.get("PageSize", DEFAULT_PAGE_SIZE)), 1), MAX_PAGE_SIZE)
            page = max(int(query.get("Page", 0)), 0)
        except ValueError:
            return _bad_request("PageSize and Page must be whole numbers")
        matching = list(self.by_sid.values())
        if wanted := query.get("PhoneNumber"):
            pattern = re.compile(re.sub(r"[^0-9*]", "", wanted).replace("*", r"\d"))
            matching = [r for r in matching if pattern.search(r["phone_number"])]
        if friendly := query.get("FriendlyName"):
            matching = [r for r in matching if r["friendly_name"] == friendly]
        start = page * size
        items = matching[start : start + size]
        filters = {k: query[k] for k in ("PhoneNumber", "FriendlyName") if k in query}

        def uri(n: int, token: str | None = None) -> str:
            params: dict[str, str | int] = {**filters, "PageSize": size, "Page": n}
            if token:
                params["PageToken"] = token
            return f"{path}?{urlencode(params)}"

        has_more = start + size < len(matching)
        return web.json_response(
            {
                "incoming_phone_numbers": items,
                "page": page,
                "page_size": size,
                "start": start,
                "end": start + max(len(items) - 1, 0),
                "uri": uri(page),
                "first_page_uri": uri(0),
                "previous_page_uri": uri(page - 1, "PB" + items[0]["sid"]) if page > 0 and items else None,
                "next_page_uri": uri(page + 1, "PA" + items[-1]["sid"]) if has_more else None,
            }
        )

    def fetch(self, path: str, sid: str) -> web.Response:
        resource = self.by_sid.get(sid)
        return web.json_response(resource) if resource is not None else _not_found(path)

    def update(self, path: str, sid: str, form: dict[str, str]) -> web.Response:
        resource = self.by_sid.get(sid)
        if resource is None:
            return _not_found(path)
        for param, value in form.items():
            if param in METHOD_FIELDS and value.upper() not in ("GET", "POST"):
                return _bad_request(f"{param} must be GET or POST")
            if param in UPDATABLE:
                resource[UPDATABLE[param]] = value.upper() if param in METHOD_FIELDS else value
        resource["date_updated"] = _now()
        return web.json_response(resource)


def _not_found(path: str) -> web.Response:
    # What Twilio answers for a sid the account does not own.
    return web.json_response(
        {
            "code": 20404,
            "message": f"The requested resource {path} was not found",
            "more_info": "https://www.twilio.com/docs/errors/20404",
            "status": 404,
        },
        status=404,
    )


def _bad_request(message: str) -> web.Response:
    return web.json_response(
        {
            "code": 20001,
            "message": message,
            "more_info": "https://www.twilio.com/docs/errors/20001",
            "status": 400,
        },
        status=400,
    )
