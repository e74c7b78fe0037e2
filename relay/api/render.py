"""Resources as Twilio Proxy v1 shows them: snake_case fields, absolute `url` and `links` that
point at Maskline's own public URL, and list pages with absolute `meta.next_page_url`. Every URL is
a valid URI: each path segment taken from a resource or a request is percent-encoded (`path`)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import quote, urlencode

from core.paging import Cursor, Page, PageRequest
from relay.api.params import iso

__all__ = ["path", "service", "phone_number", "session", "participant", "page"]


def path(*segments: object) -> str:
    """`/seg/seg/...` with each segment percent-encoded (a Sid from a request path may hold
    spaces, `/`, `?`, non-ASCII...)."""
    return "".join("/" + quote(str(s), safe="") for s in segments)


def ts(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return iso(value)


def service(row: dict[str, Any], base: str, account_sid: str) -> dict[str, Any]:
    url = base + path("v1", "Services", row["sid"])
    return {
        "sid": row["sid"],
        "unique_name": row["unique_name"],
        "account_sid": account_sid,
        "chat_instance_sid": row.get("chat_instance_sid"),
        "callback_url": row.get("callback_url"),
        "default_ttl": row["default_ttl_s"],
        "number_selection_behavior": row["number_selection_behavior"],
        "geo_match_level": row["geo_match_level"],
        "intercept_callback_url": row.get("intercept_callback_url"),
        "out_of_session_callback_url": row.get("out_of_session_callback_url"),
        "date_created": ts(row["date_created"]),
        "date_updated": ts(row["date_updated"]),
        "url": url,
        "links": {
            "sessions": f"{url}/Sessions",
            "phone_numbers": f"{url}/PhoneNumbers",
            # No short_codes: Maskline serves no ShortCodes resource, and every link resolves.
        },
        # Maskline extensions (ignored by Twilio's clients).
        "cool_off": row["cool_off_s"],
        "allowed_countries": row.get("allowed_countries"),
        "options": row.get("options") or {},
    }


def phone_number(row: dict[str, Any], base: str, account_sid: str) -> dict[str, Any]:
    return {
        "sid": row["sid"],
        "account_sid": account_sid,
        "service_sid": row["service_sid"],
        "date_created": ts(row["date_created"]),
        "date_updated": ts(row["date_updated"]),
        "phone_number": row["phone_number"],
        "friendly_name": row.get("friendly_name"),
        "iso_country": row["iso_country"],
        "capabilities": row.get("capabilities") or {},
        "url": base + path("v1", "Services", row["service_sid"], "PhoneNumbers", row["sid"]),
        "is_reserved": row["is_reserved"],
        "in_use": row.get("in_use", 0),
    }


def session(view: dict[str, Any], service_sid: str, base: str, account_sid: str) -> dict[str, Any]:
    url = base + path("v1", "Services", service_sid, "Sessions", view["sid"])
    ttl = view.get("ttl")
    return {
        "sid": view["sid"],
        "service_sid": service_sid,
        "account_sid": account_sid,
        "date_started": iso(view.get("started_ms")),
        "date_ended": iso(view.get("ended_ms")),
        "date_last_interaction": iso(view.get("last_interaction_ms")),
        "date_expiry": iso(view.get("date_expiry_ms")),
        "unique_name": view.get("unique_name") or None,
        "status": view["status"],
        "closed_reason": view.get("closed_reason") or None,
        "ttl": int(ttl) if ttl not in (None, "") else 0,
        "mode": view.get("mode"),
        "date_created": iso(view.get("created_ms")),
        "date_updated": iso(view.get("updated_ms")),
        "url": url,
        "links": {"interactions": f"{url}/Interactions", "participants": f"{url}/Participants"},
    }


def participant(p: dict[str, Any], service_sid: str, base: str, account_sid: str) -> dict[str, Any]:
    url = base + path("v1", "Services", service_sid, "Sessions", p["session_sid"], "Participants", p["sid"])
    return {
        "sid": p["sid"],
        "session_sid": p["session_sid"],
        "service_sid": service_sid,
        "account_sid": account_sid,
        "friendly_name": p.get("friendly_name") or None,
        "identifier": p["identifier"],
        "proxy_identifier": p["proxy_identifier"],
        "proxy_identifier_sid": p.get("proxy_identifier_sid"),
        # Maskline extension: the participant's PIN on the Service's shared FallbackNumber (PIN
        # mode, when the pool had no number left for it); null otherwise.
        "pin": p.get("pin") or None,
        "date_deleted": iso(p.get("deleted_ms")),
        "date_created": iso(p.get("created_ms")),
        "date_updated": iso(p.get("updated_ms")),
        "url": url,
        "links": {"message_interactions": f"{url}/MessageInteractions"},
    }


def page(
    key: str,
    items: list[dict[str, Any]],
    *,
    base: str,
    segments: tuple[object, ...],
    request: PageRequest,
    found: Page[Any],
) -> dict[str, Any]:
    """One page of a list as Twilio shows it; `segments` are the list's path segments, e.g.
    ("v1", "Services"). The next and previous pages are addressed by PageToken (core/paging.py),
    so reading on stays right while the list changes."""
    list_path = path(*segments)
    size, number = request.size, request.page

    def url(n: int, cursor: Cursor | None = None) -> str:
        query: dict[str, object] = {"PageSize": size, "Page": n}
        if cursor is not None:
            query["PageToken"] = cursor.token()
        return f"{base}{list_path}?{urlencode(query)}"

    return {
        key: items,
        "meta": {
            "page": number,
            "page_size": size,
            "first_page_url": url(0),
            "previous_page_url": url(max(number - 1, 0), found.previous) if found.previous else None,
            "url": url(number, request.cursor),
            "next_page_url": url(number + 1, found.next) if found.next else None,
            "key": key,
        },
    }
