"""The REST API's middlewares: authentication (HTTP Basic with an API key) and the one boundary
where errors become responses, Twilio-shaped JSON. They are the middlewares of the API's sub-app
(/v1, maskline/server.py); the console's pages, the health checks, /metrics and /openapi.json go
through the same error boundary route by route (`behind_boundary`). The webhooks have their own
boundary in relay/webhooks/boundary.py (they always answer TwiML) and carry neither: no coroutine
of the API's stands between a webhook and its handler."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Final
from urllib.parse import quote

import redis.exceptions
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from core.deadline import deadline
from core.errors import MasklineError, NotFound
from relay.metrics import observe_api
from relay.state import API_KEY, API_LIMITS, SETTINGS, VERIFIER

__all__ = ["error_body", "error_response", "api_error_middleware", "auth_middleware", "behind_boundary"]

log = logging.getLogger("maskline.api")
# One line per API request (method, path, status, latency, error code); the path holds SIDs only
# and the query is left out (the audit API's Number filter is a phone number).
access = logging.getLogger("maskline.access")
# A caller's X-Request-Id is kept (and echoed) when it is this plain; otherwise one is made up.
_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9._:-]{1,64}")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: int, message: str, status: int) -> dict[str, object]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def error_response(code: int, message: str, status: int) -> web.Response:
    response = web.json_response(error_body(code, message, status), status=status)
    response.twilio_code = code  # type: ignore[attr-defined]  # for the metrics and the access log
    return response


# The audit read API streams exports for as long as they take: no deadline there (it only reads).
_NO_DEADLINE_PREFIX = "/v1/Audit/"
# No Sid holds a control character, a lone surrogate or an undecodable %XX (yarl leaves invalid
# UTF-8 escaped): such a path segment names nothing, and must not reach a store (Postgres refuses
# NUL in text).
_NO_SUCH_SEGMENT: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]|%[0-9A-Fa-f]{2}")


def _check_path(request: web.Request) -> None:
    for value in request.match_info.values():
        if isinstance(value, str) and _NO_SUCH_SEGMENT.search(value):
            raise NotFound(f"The requested resource {quote(request.path)} was not found")


class _MalformedRequests(logging.Filter):
    """aiohttp answers a request it cannot parse (a NUL in a header, a request line over 8 KiB...)
    with 400 by itself, and logs it with a traceback on "aiohttp.server": the client's error gets
    one line instead, naming no header value or URL (they may hold a phone number)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and (error.code or 400) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg, record.args = (
                "refused a malformed HTTP request from %s (%s)",
                (remote, type(error).__name__),
            )
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


# Installed once, by whoever serves the API (this module is part of every app create_app builds).
if not any(isinstance(f, _MalformedRequests) for f in logging.getLogger("aiohttp.server").filters):
    logging.getLogger("aiohttp.server").addFilter(_MalformedRequests())


@web.middleware
async def api_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The API's error boundary (and its metrics and access log: relay/metrics.py, _access)."""
    if not request.path.startswith("/v1/"):
        return await _answer(request, handler)
    started = time.perf_counter()
    given = request.headers.get("X-Request-Id", "")
    request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    response = await _answer(request, handler)
    elapsed = time.perf_counter() - started
    code = getattr(response, "twilio_code", None)
    observe_api(request, response.status, elapsed, code)
    if not response.prepared:  # a streamed export has sent its headers already
        response.headers["X-Request-Id"] = request_id
    access.info(
        "%s %s %d %.1fms%s",
        request.method,
        request.rel_url.raw_path,
        response.status,
        elapsed * 1000,
        f" code={code}" if code else "",
        extra={
            "request_id": request_id,
            "status": response.status,
            "latency_ms": round(elapsed * 1000, 2),
            "code": code,
        },
    )
    return response


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.path.startswith("/v1/"):
            _check_path(request)
        if not request.path.startswith("/v1/") or request.path.startswith(_NO_DEADLINE_PREFIX):
            return await handler(request)
        # Every script this request runs carries the deadline: answered 503, nothing changed.
        give_up_s = request.config_dict[SETTINGS].api_deadline_s
        with deadline(give_up_s):
            async with asyncio.timeout(give_up_s):
                return await handler(request)
    except MasklineError as err:
        return error_response(err.code, err.message, err.status)
    except web.HTTPNotFound:
        return error_response(20404, f"The requested resource {quote(request.path)} was not found", 404)
    except web.HTTPMethodNotAllowed:
        return error_response(20004, f"Method {request.method} not allowed on {quote(request.path)}", 405)
    except web.HTTPException:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError) as err:
        log.error("store unavailable on %s %s: %s", request.method, request.path, err)
        return error_response(20503, "Maskline's data store is unavailable; retry shortly", 503)
    except Exception:
        # Never a stack trace to the caller; the log has it.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(20500, "internal error; it has been logged", 500)


def behind_boundary(routes: Iterable[web.AbstractRouteDef]) -> list[web.RouteDef]:
    """`routes` with each handler behind the error boundary (an error: Twilio-shaped JSON, never a
    traceback), for routes outside the API's sub-app."""
    guarded = []
    for route in routes:
        assert isinstance(route, web.RouteDef), route
        guarded.append(web.RouteDef(route.method, route.path, _bounded(route.handler), route.kwargs))
    return guarded


def _bounded(handler: Handler) -> Handler:
    async def bounded(request: web.Request) -> web.StreamResponse:
        return await _answer(request, handler)

    return bounded


# A refused guesser answered at once just guesses faster: its 429 waits a second (a sleeping
# request costs no CPU), so guessing clients cannot crowd the webhooks off the event loop. Bounded:
# past that many waiting, the 429 goes at once.
TARPIT_S: Final = 1.0
_TARPIT_MAX: Final = 2_000
_tarpitted = 0


async def _tarpit() -> None:
    global _tarpitted
    if _tarpitted >= _TARPIT_MAX:
        return
    _tarpitted += 1
    try:
        await asyncio.sleep(TARPIT_S)
    finally:
        _tarpitted -= 1


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic with an API key on the REST API (/v1/...); webhooks check signatures instead.
    Too many failed logins from one address or for one key SID (or a full hash queue): 429,
    Twilio's 20429, with Retry-After; nothing is verified then (relay/login_limits.py)."""
    from relay.login_limits import TooManyAttempts

    if request.path.startswith("/v1/"):
        try:
            key = await request.config_dict[VERIFIER].authenticate(
                request.headers.get("Authorization"), request.remote or ""
            )
        except TooManyAttempts as err:
            response = error_response(20429, err.message, 429)
            response.headers["Retry-After"] = str(err.retry_after_s)
            await _tarpit()
            return response
        if key is None:
            response = error_response(
                20003,
                "Authenticate with HTTP Basic: an API key SID and its secret, or the Account SID and Auth Token",
                401,
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="Maskline"'
            return response
        wait = await request.config_dict[API_LIMITS].retry_after(key.sid)
        if wait is not None:
            response = error_response(
                20429, f"Too many requests for API key {key.sid}; retry in {wait} s", 429
            )
            response.headers["Retry-After"] = str(wait)
            return response
        request[API_KEY] = key
    return await handler(request)
