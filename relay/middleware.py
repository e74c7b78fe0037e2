"""The REST API's middlewares: authentication (HTTP Basic with an API key) and the one boundary
where errors become responses, Twilio-shaped JSON. (The webhooks have their own boundary in
relay/webhooks/boundary.py: they always answer TwiML, and carry neither middleware.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import redis.exceptions
from aiohttp import web

from core.deadline import deadline
from core.errors import MasklineError
from relay.state import API_KEY, SETTINGS, VERIFIER

__all__ = ["error_body", "error_response", "api_error_middleware", "auth_middleware"]

log = logging.getLogger("maskline.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_body(code: int, message: str, status: int) -> dict[str, object]:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def error_response(code: int, message: str, status: int) -> web.Response:
    return web.json_response(error_body(code, message, status), status=status)


# The audit read API streams exports for as long as they take: no deadline there (it only reads).
_NO_DEADLINE_PREFIX = "/v1/Audit/"


@web.middleware
async def api_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if not request.path.startswith("/v1/") or request.path.startswith(_NO_DEADLINE_PREFIX):
            return await handler(request)
        # Every script this request runs carries the deadline: answered 503, nothing changed.
        give_up_s = request.app[SETTINGS].api_deadline_s
        with deadline(give_up_s):
            async with asyncio.timeout(give_up_s):
                return await handler(request)
    except MasklineError as err:
        return error_response(err.code, err.message, err.status)
    except web.HTTPNotFound:
        return error_response(20404, f"The requested resource {request.path} was not found", 404)
    except web.HTTPMethodNotAllowed:
        return error_response(20004, f"Method {request.method} not allowed on {request.path}", 405)
    except web.HTTPException:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, TimeoutError) as err:
        log.error("store unavailable on %s %s: %s", request.method, request.path, err)
        return error_response(20500, "Maskline's data store is unavailable; retry shortly", 503)
    except Exception:
        # Never a stack trace to the caller; the log has it.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(20500, "internal error; it has been logged", 500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """HTTP Basic with an API key on the REST API (/v1/...); webhooks check signatures instead."""
    if request.path.startswith("/v1/"):
        key = await request.app[VERIFIER].verify_header(request.headers.get("Authorization"))
        if key is None:
            response = error_response(
                20003, "Authenticate with HTTP Basic: API key SID as user, its secret as password", 401
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="Maskline"'
            return response
        request[API_KEY] = key
    return await handler(request)
