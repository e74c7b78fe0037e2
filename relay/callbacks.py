"""Calls to the customer's own endpoints, as Twilio Proxy makes them (form-encoded, signed with
the auth token so they can check X-Twilio-Signature):

- CallbackUrl: every interaction, informational. Posted from a bounded background queue so a slow
  or dead endpoint never delays a relay; when the queue is full the callback is dropped and logged.
- InterceptCallbackUrl: asked before relaying; 403 blocks, anything else (or a timeout) lets through.
- OutOfSessionCallbackUrl: asked when no live session matches; answers TwiML or auto-create JSON."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
from twilio.request_validator import RequestValidator

from relay.api.params import iso

__all__ = [
    "CallbackDispatcher",
    "interaction_fields",
    "intercept",
    "ask_out_of_session",
    "OutOfSessionAnswer",
]

log = logging.getLogger("maskline.callbacks")

QUEUE_SIZE: Final = 10_000
WORKERS: Final = 8


def interaction_fields(
    ix: Mapping[str, Any], *, service_sid: str, account_sid: str, twilio_api_url: str
) -> dict[str, str]:
    """Twilio Proxy's callback parameters for an interaction (camelCase, as its webhooks send)."""

    def resource_url(kind: str, sid: str) -> str:
        if not sid:
            return ""
        plural = "Messages" if kind.lower() == "message" else "Calls"
        return f"{twilio_api_url}/2010-04-01/Accounts/{account_sid}/{plural}/{sid}.json"

    fields = {
        "interactionSid": ix.get("sid", ""),
        "interactionSessionSid": ix.get("session_sid", ""),
        "interactionServiceSid": service_sid,
        "interactionAccountSid": account_sid,
        "interactionType": ix.get("type", ""),
        "interactionData": ix.get("data", ""),
        "interactionDateCreated": iso(ix.get("created_ms")) or "",
        "interactionDateUpdated": iso(ix.get("updated_ms")) or "",
    }
    for side in ("inbound", "outbound"):
        kind = str(ix.get(f"{side}_resource_type", ""))
        sid = str(ix.get(f"{side}_resource_sid", ""))
        fields[f"{side}ParticipantSid"] = str(ix.get(f"{side}_participant_sid", ""))
        fields[f"{side}ResourceSid"] = sid
        fields[f"{side}ResourceStatus"] = str(ix.get(f"{side}_resource_status", ""))
        fields[f"{side}ResourceType"] = kind.lower()
        fields[f"{side}ResourceUrl"] = resource_url(kind, sid)
    return {k: str(v) for k, v in fields.items()}


def _signed_headers(validator: RequestValidator, url: str, form: Mapping[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": validator.compute_signature(url, dict(form)), "User-Agent": "Maskline/1.0"}


class CallbackDispatcher:
    """Bounded queue + a few worker tasks posting CallbackUrl requests in the background."""

    def __init__(self, http: aiohttp.ClientSession, *, auth_token: str, timeout_s: float) -> None:
        self.http = http
        self.validator = RequestValidator(auth_token)
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, url: str, form: dict[str, str]) -> bool:
        """Never blocks; False (and a log line) when the queue is full."""
        try:
            self.queue.put_nowait((url, form))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "callback queue full (%d): dropped callback for %s", QUEUE_SIZE, form.get("interactionSid")
            )
            return False

    async def _work(self) -> None:
        while True:
            url, form = await self.queue.get()
            try:
                async with self.http.post(
                    url, data=form, headers=_signed_headers(self.validator, url, form), timeout=self.timeout
                ) as resp:
                    await resp.read()
                    if resp.status >= 400:
                        log.warning("callback %s answered HTTP %d", form.get("interactionSid"), resp.status)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a broken endpoint must never stop the workers
                log.warning("callback %s failed: %s", form.get("interactionSid"), type(err).__name__)
            finally:
                self.queue.task_done()


async def intercept(
    http: aiohttp.ClientSession,
    validator: RequestValidator,
    url: str,
    form: dict[str, str],
    *,
    timeout_s: float,
) -> bool:
    """True when the interaction may go ahead: only an HTTP 403 blocks it."""
    try:
        async with http.post(
            url,
            data=form,
            headers=_signed_headers(validator, url, form),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            return resp.status != 403
    except Exception as err:  # timeout, refused, anything: Twilio Proxy lets the interaction through
        log.warning(
            "intercept callback for %s failed (%s); letting it through",
            form.get("interactionSid"),
            type(err).__name__,
        )
        return True


@dataclass(frozen=True)
class OutOfSessionAnswer:
    twiml: str | None = None  # TwiML to answer with as it is
    create: dict[str, Any] | None = None  # auto-create session JSON


async def ask_out_of_session(
    http: aiohttp.ClientSession,
    validator: RequestValidator,
    url: str,
    form: dict[str, str],
    *,
    timeout_s: float,
) -> OutOfSessionAnswer | None:
    """None when the endpoint failed or said nothing usable (the caller then uses the default)."""
    try:
        async with http.post(
            url,
            data=form,
            headers=_signed_headers(validator, url, form),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            if resp.status >= 300:
                log.warning("out-of-session callback answered HTTP %d", resp.status)
                return None
            if resp.content_type == "application/json":
                data = await resp.json()
                return OutOfSessionAnswer(create=data) if isinstance(data, dict) else None
            text = (await resp.text()).strip()
            if text.startswith("<"):
                return OutOfSessionAnswer(twiml=text)
            return None
    except Exception as err:
        log.warning("out-of-session callback failed: %s", type(err).__name__)
        return None
