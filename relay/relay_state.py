"""What the webhooks and the interactions API share, opened and closed in one cleanup context:
the router, the interaction store, one HTTP client (callbacks, intercept, out-of-session, Twilio's
REST API), the background callback queue and the signature validator.

`setup(app)` must run after the cleanup context that opens Redis (it reads app[REDIS])."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from twilio.request_validator import RequestValidator

from pool import keys
from pool.resp import RespClient
from relay.appkeys import REDIS, SESSIONS, SETTINGS
from relay.callbacks import CallbackDispatcher
from relay.outbound import TwilioMessages
from relay.settings import Settings
from sessions.interactions import InteractionStore
from sessions.routing import SEEN_TTL_S, Router
from sessions.store import SessionStore

__all__ = ["RelayState", "RelayOptions", "AnswerWriter", "RELAY", "setup"]

log = logging.getLogger("maskline.webhooks")

DEFAULT_OUT_OF_SESSION_MESSAGE = "This conversation has ended. Please contact us through the app."
DEFAULT_HELP_MESSAGE = "This is a masked number for your conversation. Reply STOP to stop texts from it."
TEXTS_ONLY_MESSAGE = "This number only accepts text messages."
CALLS_ONLY_MESSAGE = "This number only accepts calls."
CALL_APOLOGY = "Sorry, we cannot connect your call right now. Please try again in a few minutes."
DEFAULT_RECORDING_CONSENT = "This call may be recorded."


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """A Service's relay settings (route_inbound.lua returns them with every route)."""

    callback_url: str = ""
    intercept_url: str = ""
    out_of_session_url: str = ""
    call_time_limit_s: int | None = None
    whisper: str = ""
    record_calls: bool = False
    recording_consent: str = ""
    out_of_session_message: str = DEFAULT_OUT_OF_SESSION_MESSAGE
    help_message: str = DEFAULT_HELP_MESSAGE

    @classmethod
    def from_svc(cls, svc: list[Any] | None) -> RelayOptions:
        callback, intercept, oos, raw = ((svc or []) + [None] * 4)[:4]
        try:
            options = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            options = {}
        if not isinstance(options, dict):
            options = {}
        limit = options.get("call_time_limit_s")
        return cls(
            callback_url=callback or "",
            intercept_url=intercept or "",
            out_of_session_url=oos or "",
            call_time_limit_s=int(limit) if isinstance(limit, int) and limit > 0 else None,
            whisper=str(options.get("whisper") or ""),
            record_calls=bool(options.get("record_calls")),
            recording_consent=str(options.get("recording_consent") or ""),
            out_of_session_message=str(
                options.get("out_of_session_message") or DEFAULT_OUT_OF_SESSION_MESSAGE
            ),
            help_message=str(options.get("help_message") or DEFAULT_HELP_MESSAGE),
        )

    @property
    def consent(self) -> str:
        return (self.recording_consent or DEFAULT_RECORDING_CONSENT) if self.record_calls else ""


class AnswerWriter:
    """Remembers the TwiML given to each MessageSid / CallSid (what Router.remember_answer does),
    batched: answers queued during one loop iteration go to Redis in one pipeline, so the hot
    path pays one Redis round trip per webhook instead of two. Twilio retries after seconds; the
    write lands within a millisecond or so, and until then a retry finds the in-flight marker
    and gets an empty answer, never a second relay."""

    def __init__(self, redis: RespClient) -> None:
        self.redis = redis
        self._pending: list[tuple[str, str]] = []
        self._task: asyncio.Task[None] | None = None

    def remember(self, service_sid: str, resource_sid: str, answer: str) -> None:
        if not resource_sid:
            return
        self._pending.append((keys.seen(service_sid, resource_sid), answer))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    # Written back to back on one pipelined connection: one flush, replies in order.
                    await asyncio.gather(
                        *(self.redis.execute("SET", key, answer, "EX", SEEN_TTL_S) for key, answer in batch)
                    )
                except Exception as err:  # Redis down: the retry then finds the marker (or nothing)
                    log.warning("could not remember %d webhook answer(s): %s", len(batch), type(err).__name__)
        finally:
            self._task = None

    async def drain(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)


@dataclass
class RelayState:
    settings: Settings
    router: Router
    sessions: SessionStore
    interactions: InteractionStore
    http: aiohttp.ClientSession
    callbacks: CallbackDispatcher
    messages: TwilioMessages
    validator: RequestValidator
    answers: AnswerWriter
    _options: dict[tuple[Any, ...], RelayOptions] = field(default_factory=dict)

    def options(self, svc: list[Any] | None) -> RelayOptions:
        """Parsed once per distinct Service settings, then a dict lookup."""
        key = tuple(svc or ())
        found = self._options.get(key)
        if found is None:
            if len(self._options) > 10_000:
                self._options.clear()
            found = self._options[key] = RelayOptions.from_svc(list(key))
        return found

    def url(self, path: str) -> str:
        return self.settings.public_url + path


RELAY: web.AppKey[RelayState] = web.AppKey("relay", RelayState)


async def _relay_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    sessions = app[SESSIONS]
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    # The webhooks' own pipelined connection (pool/resp.py), to the same Redis as app[REDIS].
    fast = RespClient.like(app[REDIS])
    callbacks = CallbackDispatcher(
        http, auth_token=settings.twilio_auth_token, timeout_s=settings.callback_timeout_s
    )
    callbacks.start()
    app[RELAY] = RelayState(
        settings=settings,
        router=Router(app[REDIS], scripts=sessions.scripts, clock=sessions.clock, fast=fast),
        sessions=sessions,
        interactions=InteractionStore(app[REDIS], clock=sessions.clock),
        http=http,
        callbacks=callbacks,
        messages=TwilioMessages(
            http,
            api_url=settings.twilio_api_url,
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token,
        ),
        validator=RequestValidator(settings.twilio_auth_token),
        answers=AnswerWriter(fast),
    )
    try:
        yield
    finally:
        await app[RELAY].answers.drain()
        await callbacks.stop()
        await http.close()
        await fast.aclose()


def setup(app: web.Application) -> None:
    """Register the relay's resources and routes (webhooks, interactions API)."""
    from relay import webhooks
    from relay.api import interactions

    app.cleanup_ctx.append(_relay_ctx)
    app.add_routes(webhooks.routes)
    app.add_routes(interactions.routes)
