"""The webhooks' one boundary: whatever happens they answer TwiML (never a 5xx, never a stack
trace), within settings.webhook_deadline_s; only a request whose X-Twilio-Signature does not check
out gets 403, and one whose body cannot be read (invalid UTF-8, an unknown charset, a malformed
multipart or JSON body) 400: nothing of either is acted on."""

from __future__ import annotations

import base64
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import orjson
from aiohttp import web
from multidict import MultiDict, MultiDictProxy
from redis.exceptions import RedisError
from twilio.request_validator import HMAC_SHA1, SIGNATURE_SETTINGS_HEADER, get_signature_algorithm

from core.deadline import deadline
from core.errors import InvalidParameter, Unavailable
from pool.numbers import mask
from relay.api.params import decode_text, read_form
from relay.metrics import observe_webhook
from relay.state import RELAY, RelayState

__all__ = [
    "Form",
    "STORE_FAULTS",
    "scrub",
    "xml",
    "read_signed",
    "signed_url",
    "forbidden",
    "answer",
    "log_fault",
]

log = logging.getLogger("maskline.webhooks")
access = logging.getLogger("maskline.access")  # with settings.webhook_access_log only

_LONG_NUMBER: Final = re.compile(r"\+?\d[\d ().-]{5,}\d")
_FORBIDDEN: Final = "Forbidden: invalid or missing X-Twilio-Signature\n"
# What a trusted proxy may name: a scheme Twilio calls, and a host[:port] (no path, no userinfo).
_FORWARDED_PROTO: Final = frozenset({"http", "https"})
_FORWARDED_HOST: Final = re.compile(
    r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?"
)

Form = MultiDictProxy[str] | MultiDict[str]
# What Redis down, slow or stalled raises (DeadlineExceeded is an Unavailable).
STORE_FAULTS: Final = (RedisError, OSError, TimeoutError, Unavailable)
T = TypeVar("T")


def scrub(text: object) -> str:
    """`text` for a log line, with anything that looks like a phone number masked."""
    return _LONG_NUMBER.sub(lambda m: mask(m.group(0)), str(text))[:300]


def signed_url(request: web.Request) -> tuple[str, bool]:
    """The URL Twilio signed, as far as this service can tell, and whether it came from forwarded
    headers: the public URL + the request's path and query; with settings.trust_forwarded, the
    scheme and host of X-Forwarded-Proto / X-Forwarded-Host (the first of each list) instead,
    when both are well formed."""
    settings = request.app[RELAY].settings
    if settings.trust_forwarded:
        proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        host = request.headers.get("X-Forwarded-Host", "").split(",")[0].strip()
        if proto in _FORWARDED_PROTO and _FORWARDED_HOST.fullmatch(host):
            return f"{proto}://{host}{request.path_qs}", True
    return settings.public_url + request.path_qs, False


def sha1_signature(token: bytes, url: str, params: Form) -> str:
    """Twilio's X-Twilio-Signature of a form POST, as RequestValidator.compute_signature makes it
    (the URL, then each distinct name in order with each of its distinct values in order, HMAC-SHA1
    with the Auth Token, base64), built with one join instead of string concatenation."""
    parts = [url]
    # (each distinct (name, value) once, by name then value: the validator's order, one sort)
    for name, value in sorted(set(params.items())):
        parts.append(name)
        parts.append(value)
    mac = hmac.digest(token, "".join(parts).encode(), "sha1")  # one-shot: no HMAC object
    return base64.b64encode(mac).decode()


def xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")


async def read_signed(request: web.Request) -> Form | None:
    """The request's parameters if its signature checks out over the public URL, else None.
    A body that cannot be read (invalid UTF-8, an unknown charset, a malformed multipart or JSON
    body) raises HTTPBadRequest: 400 with a short text, one log line, nothing acted on."""
    signature = request.headers.get("X-Twilio-Signature")
    if not signature:
        return None
    state = request.app[RELAY]
    url, _ = signed_url(request)
    algorithm = get_signature_algorithm(request.headers.get(SIGNATURE_SETTINGS_HEADER))
    if request.content_type == "application/json":
        # JSON bodies are covered by bodySHA256 in the query; without it the body is unsigned.
        if "bodySHA256" not in request.query:
            return None
        text = await _read(request, _json_text)
        if not state.validator.validate(url, text, signature, algorithm):
            return None
        return _json_form(request, text)
    params = await _read(request, read_form)
    # Fast path: the URL exactly as configured (one HMAC, constant-time compare); otherwise the
    # validator's full check (with and without the default port, SHA-256 settings header).
    if algorithm == HMAC_SHA1 and hmac.compare_digest(
        sha1_signature(state.validator.token, url, params), signature
    ):
        return params
    if not state.validator.validate(url, params, signature, algorithm):
        return None
    return params


async def _read(request: web.Request, parse: Callable[[web.Request], Awaitable[T]]) -> T:
    """The body parsed by `parse` (relay/api/params.py: strict decoding), or 400."""
    try:
        return await parse(request)
    except InvalidParameter as err:
        raise _bad_request(request, err.message) from None


async def _json_text(request: web.Request) -> str:
    return decode_text(await request.read(), request.charset, "the JSON body")


def _json_form(request: web.Request, text: str) -> Form:
    """A signed JSON body's top-level members as parameters (others as their JSON text)."""
    try:
        obj = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        raise _bad_request(request, "the JSON body is not valid JSON") from None
    form: MultiDict[str] = MultiDict()
    if isinstance(obj, dict):
        for k, v in obj.items():
            form.add(str(k), v if isinstance(v, str) else orjson.dumps(v).decode())
    return form


def _bad_request(request: web.Request, reason: str) -> web.HTTPBadRequest:
    log.warning("refused %s %s: %s", request.method, request.path, scrub(reason))
    return web.HTTPBadRequest(text=f"Bad Request: {reason}\n")


def _shown(url: str) -> str:
    """A URL for a log line: the origin and path as they are, the query scrubbed of numbers."""
    head, sep, query = url.partition("?")
    return head + sep + scrub(query) if sep else head


def forbidden(request: web.Request) -> web.Response:
    """403, and a log line that says what was checked: most refusals are a MASKLINE_PUBLIC_URL
    that is not the URL Twilio calls (a proxy or tunnel in between)."""
    url, forwarded = signed_url(request)
    settings = request.app[RELAY].settings
    why = "bad X-Twilio-Signature" if request.headers.get("X-Twilio-Signature") else "no X-Twilio-Signature"
    log.warning(
        "refused %s %s: %s for URL %s (MASKLINE_PUBLIC_URL=%s, forwarded headers %s); if Twilio "
        "calls another URL, set MASKLINE_PUBLIC_URL to it, or MASKLINE_TRUST_FORWARDED=1 behind a "
        "proxy you trust",
        request.method,
        request.path,
        why,
        _shown(url),
        settings.public_url,
        "used" if forwarded else ("absent or not well formed" if settings.trust_forwarded else "not trusted"),
    )
    return web.Response(status=403, text=_FORBIDDEN)


async def answer(
    request: web.Request,
    what: str,
    parse: Callable[[Form], T],
    handle: Callable[[RelayState, T], Awaitable[str]],
    fallback: str,
    on_fault: Callable[[RelayState, T, BaseException, int], None] | None = None,
) -> web.Response:
    """Unsigned or tampered gets 403 and nothing is done; otherwise TwiML within the deadline, and
    `fallback` when Redis is down or slow or anything unexpected happens. Every script run while
    handling it carries the deadline (core/deadline.py): after a fallback answer, none of them
    starts any more. `on_fault(state, parsed, error, scripts_deadline_ms)` hears of each fallback."""
    started = time.perf_counter()
    form = await read_signed(request)
    if form is None:
        observe_webhook(what, "refused", time.perf_counter() - started)
        return forbidden(request)
    state = request.app[RELAY]
    give_up_s = state.settings.webhook_deadline_s
    outcome = "fallback"
    try:
        with deadline(give_up_s) as scripts_deadline_ms:
            try:
                parsed = parse(form)
            except Exception as err:
                log_fault(what, form, err)
                return xml(fallback)
            try:
                async with state.webhook_deadline.limit():
                    answered = xml(await handle(state, parsed))
                outcome = "answered"
                return answered
            except Exception as err:
                log_fault(what, form, err)
                if on_fault is not None:
                    on_fault(state, parsed, err, scripts_deadline_ms)
                return xml(fallback)
    finally:
        elapsed = time.perf_counter() - started
        observe_webhook(what, outcome, elapsed)
        if state.settings.webhook_access_log:
            access.info(
                "webhook %s %s from %s to %s: %s in %.1fms",
                what,
                form.get("MessageSid") or form.get("CallSid") or "-",
                mask(form.get("From", "")),
                mask(form.get("To", "")),
                outcome,
                elapsed * 1000,
                extra={"outcome": outcome, "latency_ms": round(elapsed * 1000, 2)},
            )


def log_fault(what: str, form: Form, err: BaseException) -> None:
    sid = form.get("MessageSid") or form.get("CallSid") or ""
    log.error(
        "webhook %s %s from %s to %s failed (%s: %s); answered safe TwiML",
        what,
        sid,
        mask(form.get("From", "")),
        mask(form.get("To", "")),
        type(err).__name__,
        scrub(err),
    )
