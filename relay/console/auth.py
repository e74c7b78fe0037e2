"""Console sign-in: an API key (or the Account SID and Auth Token) typed once, then a cookie.

The cookie holds a random token (HttpOnly, SameSite=Strict, Path=/console, Secure behind https);
Redis holds only its SHA-256, with the key it stands for and the session's CSRF token, for
SESSION_TTL_S. Every form carries the CSRF token and every POST is refused without it (403). The
sign-in form goes through the same failed-login limiter as the REST API (relay/login_limits.py),
and a key revoked since sign-in stops working at its next request (Postgres is asked)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

import orjson
import redis.asyncio as aioredis
from aiohttp import web

from relay.credentials import ApiKey
from relay.state import PG, REDIS, SETTINGS

__all__ = ["COOKIE", "Console", "signed_in", "start", "end", "check_csrf"]

COOKIE: Final = "ml_console"
SESSION_TTL_S: Final = 8 * 3600
_KEY_PREFIX: Final = "ml:{console}:s:"
STILL_VALID: Final = "SELECT 1 FROM api_keys WHERE sid = $1 AND date_revoked IS NULL"


@dataclass(frozen=True)
class Console:
    """Who is signed in: the key's scope and permissions apply to every console page."""

    key: ApiKey
    csrf: str
    token_key: str  # its Redis key

    @property
    def may_audit(self) -> bool:
        return "audit" in self.key.permissions

    @property
    def may_proxy(self) -> bool:
        return "proxy" in self.key.permissions


def _redis_key(token: str) -> str:
    return _KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()


async def start(request: web.Request, key: ApiKey, response: web.StreamResponse) -> None:
    """Sign in as `key`: a new session, its cookie set on `response`."""
    token = secrets.token_urlsafe(32)
    record = {
        "sid": key.sid,
        "name": key.friendly_name,
        "permissions": sorted(key.permissions),
        "services": None if key.service_sids is None else sorted(key.service_sids),
        "csrf": secrets.token_urlsafe(24),
    }
    redis: aioredis.Redis = request.app[REDIS]
    await redis.set(_redis_key(token), orjson.dumps(record), ex=SESSION_TTL_S)
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_TTL_S,
        path="/console",
        httponly=True,
        samesite="Strict",
        secure=request.app[SETTINGS].public_url.startswith("https://"),
    )


async def signed_in(request: web.Request) -> Console | None:
    token = request.cookies.get(COOKIE, "")
    if not token or len(token) > 128:
        return None
    name = _redis_key(token)
    raw = await request.app[REDIS].get(name)
    if raw is None:
        return None
    record = orjson.loads(raw)
    sid = record["sid"]
    if not sid.startswith("AC") and await request.app[PG].fetchval(STILL_VALID, sid) is None:
        await request.app[REDIS].delete(name)  # revoked since sign-in
        return None
    services = record["services"]
    key = ApiKey(
        sid,
        record["name"],
        frozenset(record["permissions"]),
        None if services is None else frozenset(services),
    )
    return Console(key, record["csrf"], name)


async def end(request: web.Request, console: Console, response: web.StreamResponse) -> None:
    await request.app[REDIS].delete(console.token_key)
    response.del_cookie(COOKIE, path="/console")


async def check_csrf(request: web.Request, console: Console) -> None:
    """Every POST of the console carries the session's CSRF token (403 without it)."""
    form = await request.post()
    given = str(form.get("csrf", ""))
    if not given or not hmac.compare_digest(given, console.csrf):
        raise web.HTTPForbidden(
            text="This form has expired or did not come from the console; reload the page."
        )
