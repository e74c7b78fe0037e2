"""Helpers every API view shares: the authenticated key, its Service scope, paging."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.errors import Forbidden, NotFound
from relay.state import API_KEY, SERVICES, SESSIONS, SETTINGS, ApiKey

__all__ = ["api_key", "service_sid", "session_sid", "base_url", "account_sid", "json", "require"]


def api_key(request: web.Request) -> ApiKey:
    key: ApiKey = request[API_KEY]
    return key


def require(request: web.Request, permission: str) -> ApiKey:
    key = api_key(request)
    if permission not in key.permissions:
        raise Forbidden(f"API key {key.sid} lacks the {permission!r} permission")
    return key


async def service_sid(request: web.Request, name: str = "ServiceSid") -> str:
    """The SID of the Service in the path (given by SID or UniqueName), if the key may see it
    (another tenant's Service looks absent)."""
    given = request.match_info[name]
    sid = await request.config_dict[SERVICES].resolve(given)
    if not api_key(request).may_see(sid):
        raise NotFound(f"Service {given} was not found")
    return sid


async def session_sid(request: web.Request, service: str, name: str = "SessionSid") -> str:
    """The SID of the Session in the path, given by SID or UniqueName (80308 for an unknown name)."""
    sid: str = await request.config_dict[SESSIONS].resolve(service, request.match_info[name])
    return sid


def base_url(request: web.Request) -> str:
    return request.config_dict[SETTINGS].public_url


def account_sid(request: web.Request) -> str:
    return request.config_dict[SETTINGS].twilio_account_sid


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
