"""Helpers every API view shares: the authenticated key, its Service scope, paging."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from core.errors import Forbidden, NotFound
from relay.state import API_KEY, SETTINGS, ApiKey

__all__ = ["api_key", "service_sid", "base_url", "account_sid", "json", "require"]


def api_key(request: web.Request) -> ApiKey:
    key: ApiKey = request[API_KEY]
    return key


def require(request: web.Request, permission: str) -> ApiKey:
    key = api_key(request)
    if permission not in key.permissions:
        raise Forbidden(f"API key {key.sid} lacks the {permission!r} permission")
    return key


def service_sid(request: web.Request, name: str = "ServiceSid") -> str:
    """The Service in the path, if the key may see it (another tenant's Service looks absent)."""
    sid = request.match_info[name]
    if not api_key(request).may_see(sid):
        raise NotFound(f"Service {sid} was not found")
    return sid


def base_url(request: web.Request) -> str:
    return request.app[SETTINGS].public_url


def account_sid(request: web.Request) -> str:
    return request.app[SETTINGS].twilio_account_sid


def json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
