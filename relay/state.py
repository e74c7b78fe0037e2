"""Typed application state (aiohttp AppKey), the per-request authenticated key, and what the
webhooks and the interactions API share (RelayState). maskline/server.py fills them in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiohttp import web
from twilio.request_validator import RequestValidator

from core import keys
from core.deadline import Watchdog
from core.resp import FastRedis
from core.settings import Settings
from pool.registry import NumberRegistry
from relay.api_limits import RequestLimiter
from relay.callbacks import CallbackDispatcher, interaction_fields
from relay.credentials import ApiKey, KeyVerifier
from relay.fallbacks import FallbackRecorder
from relay.outbound import TwilioMessages
from relay.twilio_account import TwilioAccount
from sessions.blocklist import BlockList
from sessions.interactions import InteractionStore
from sessions.models import Replay, seen_value
from sessions.routing import Router
from sessions.scheduled import ScheduledMessages
from sessions.services import ServiceStore
from sessions.store import SessionStore

__all__ = [
    "SETTINGS",
    "REDIS",
    "PG",
    "SESSIONS",
    "SERVICES",
    "NUMBERS",
    "BLOCKED",
    "SCHEDULED",
    "ERASER",
    "Eraser",
    "RELAY",
    "VERIFIER",
    "API_LIMITS",
    "TWILIO_ACCOUNT",
    "ApiKey",
    "API_KEY",
    "VIA",
    "RelayState",
    "AnswerWriter",
]

log = logging.getLogger("maskline.webhooks")


class AnswerWriter:
    """Remembers how each MessageSid / CallSid was answered (what Router.remember_answer does),
    batched: the answers given within COALESCE_S of the first go to Redis in one write, so the hot
    path pays one Redis round trip per webhook instead of two, and a share of a write (its system
    call, Redis' wake-up) for the answer. Twilio retries after seconds; the write lands within a
    few milliseconds, and until then a retry finds the in-flight marker and gets an empty answer,
    never a second relay. The same write takes the answered interactions off the Service's
    in-flight index (route_inbound.lua adds them), so the sweeper's settle_unanswered.lua only
    meets those whose answer was never written (a worker killed first): before, every relayed
    text waited there for the sweeper, whose batches of 500 held Redis for milliseconds each
    second (the p99 at a fixed 1,000 texts/s) and cost Redis an HMGET and a GET per text."""

    # How long the first answer of a batch waits for others: 1 ms gathers several at any load
    # worth batching (against a write per loop iteration: +4 % and +10 % relays/s, medians of A/B
    # runs on a noisy machine).
    COALESCE_S = 0.001

    def __init__(self, redis: FastRedis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._pending: list[tuple[str, str]] = []
        self._answered: dict[str, list[str]] = {}  # in-flight index -> interaction sids answered
        self._task: asyncio.Task[None] | None = None

    def remember(
        self,
        service_sid: str,
        resource_sid: str,
        replay: Replay,
        interaction_sid: str,
        answered: Sequence[str] = (),
    ) -> None:
        """How to answer a retry of `resource_sid` (never the TwiML: route_inbound.lua);
        `answered`: the interactions this answer settles (every leg of a text to several)."""
        if not resource_sid:
            return  # no MessageSid / CallSid: never de-duplicated
        self._pending.append((keys.seen(service_sid, resource_sid), seen_value(replay, interaction_sid)))
        if answered:
            self._answered.setdefault(keys.inflight(service_sid), []).extend(answered)
        if self._task is None:
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(self.COALESCE_S)
            while self._pending:
                batch, self._pending = self._pending, []
                answered, self._answered = self._answered, {}
                commands: list[tuple[Any, ...]] = [
                    ("SET", key, answer, "EX", self.ttl_s) for key, answer in batch
                ]
                # (after the markers: an entry left by a lost write is judged by its marker)
                commands += [("ZREM", index, *sids) for index, sids in answered.items()]
                try:
                    # One write for the batch on the pipelined connection, replies in order.
                    replies = await self.redis.execute_many(commands)
                    failed = [r for r in replies if isinstance(r, BaseException)]
                    if failed:
                        raise failed[0]
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
    fallbacks: FallbackRecorder
    # Every webhook's time limit (settings.webhook_deadline_s), one timer for all of them.
    webhook_deadline: Watchdog

    def url(self, path: str) -> str:
        return self.settings.public_url + path

    def callback_fields(self, service_sid: str, interaction: Mapping[str, Any]) -> dict[str, str]:
        """Twilio Proxy's callback parameters for an interaction of this Service."""
        return interaction_fields(
            interaction,
            service_sid=service_sid,
            account_sid=self.settings.twilio_account_sid,
            twilio_api_url=self.settings.twilio_api_url,
        )


SETTINGS: web.AppKey[Settings] = web.AppKey("settings", Settings)
REDIS: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)
PG: web.AppKey[asyncpg.Pool] = web.AppKey("pg", asyncpg.Pool)
SESSIONS: web.AppKey[SessionStore] = web.AppKey("sessions", SessionStore)
SERVICES: web.AppKey[ServiceStore] = web.AppKey("services", ServiceStore)
NUMBERS: web.AppKey[NumberRegistry] = web.AppKey("numbers", NumberRegistry)
BLOCKED: web.AppKey[BlockList] = web.AppKey("blocked", BlockList)
SCHEDULED: web.AppKey[ScheduledMessages] = web.AppKey("scheduled", ScheduledMessages)
# Erase a number everywhere (number, actor) -> what was done, in words: maskline/erasure.py does it;
# the process injects it (the console's erasure form), so this floor never imports the process.
Eraser = Callable[[str, str], Awaitable[str]]
ERASER: web.AppKey[Eraser] = web.AppKey("eraser")
RELAY: web.AppKey[RelayState] = web.AppKey("relay", RelayState)
VERIFIER: web.AppKey[KeyVerifier] = web.AppKey("verifier", KeyVerifier)
API_LIMITS: web.AppKey[RequestLimiter] = web.AppKey("api_limits", RequestLimiter)
# The Twilio account's IncomingPhoneNumbers (PhoneNumbers created with Sid=PN...).
TWILIO_ACCOUNT: web.AppKey[TwilioAccount] = web.AppKey("twilio_account", TwilioAccount)
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("api_key", ApiKey)
# How a request reached the stores: "api" (the default) or "console" (recorded on audit reads).
VIA: web.RequestKey[str] = web.RequestKey("via", str)
