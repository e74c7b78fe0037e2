"""The one boundary where errors become responses: Twilio-shaped JSON for the API.
(Webhooks have their own boundary in relay/webhooks.py: they always answer TwiML.)"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import redis.exceptions
from aiohttp import web

from pool.errors import MasklineError

__all__ = ["error_body", "error_response", "api_error_middleware"]

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


@web.middleware
async def api_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MasklineError as err:
        return error_response(err.code, err.message, err.status)
    except web.HTTPNotFound:
        return error_response(20404, f"The requested resource {request.path} was not found", 404)
    except web.HTTPMethodNotAllowed:
        return error_response(20004, f"Method {request.method} not allowed on {request.path}", 405)
    except web.HTTPException:
        raise
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as err:
        log.error("store unavailable on %s %s: %s", request.method, request.path, err)
        return error_response(20500, "Maskline's data store is unavailable; retry shortly", 503)
    except Exception:
        # Never a stack trace to the caller; the log has it.
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(20500, "internal error; it has been logged", 500)
