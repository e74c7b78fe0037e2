"""The scheduler duty: sends scheduled messages when they are due (sessions/scheduled.py holds
them). It runs where its lease is held (maskline/server.py), one process at a time: every
`interval_s` it claims each Service's due messages and sends them through the proactive path,
then records how each ended (sent, failed; canceled when the session, the participant or their
opt-out no longer allows it)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Final

import orjson
import redis.exceptions

from core import keys
from core.errors import MasklineError
from relay.outbound import TwilioSendError
from relay.proactive import record_and_send, twilio_answer
from relay.state import RelayState
from sessions.scheduled import ScheduledMessages

__all__ = ["Scheduler"]

log = logging.getLogger("maskline.scheduler")

INTERVAL_S: Final = 0.1
# A free-form text to a WhatsApp participant outside WhatsApp's 24-hour window (record_proactive.lua).
OUTSIDE_WINDOW: Final = 63016
# Why a due message could not be sent, by the error record_proactive.lua gave.
_CANCELED: Final = {80607: "session_closed", 21610: "opted_out", 20404: "participant_removed"}


class Scheduler:
    def __init__(self, state: RelayState, store: ScheduledMessages, *, concurrency: int = 32) -> None:
        self.state = state
        self.store = store
        self._gate = asyncio.Semaphore(concurrency)

    async def run(self, stop: asyncio.Event, *, interval_s: float = INTERVAL_S) -> None:
        while not stop.is_set():
            try:
                await self.run_once()
            except (redis.exceptions.RedisError, OSError, TimeoutError) as err:
                log.warning("scheduler: %s; retrying", type(err).__name__)
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                pass

    async def run_once(self) -> int:
        """Claim and send every due message of every Service; returns how many were claimed."""
        claimed = 0
        for ks in sorted(str(s) for s in await self.store.redis.smembers(keys.SERVICES)):
            due = await self.store.claim_due(ks)
            claimed += len(due)
            await asyncio.gather(*(self._send(ks, m) for m in due))
        return claimed

    async def _send(self, ks: str, message: dict[str, Any]) -> None:
        async with self._gate:
            km = message["sid"]
            try:
                ix, sent = await record_and_send(
                    self.state,
                    ks,
                    message["session_sid"],
                    message["participant_sid"],
                    orjson.loads(message["data"]),
                )
            except TwilioSendError as err:  # Twilio refused it, or stayed unavailable through the retries
                await self.store.finish(ks, km, "failed", reason=f"twilio_{err.code}")
                return
            except MasklineError as err:  # nothing was sent: the session no longer allows it
                if err.code == OUTSIDE_WINDOW:  # WhatsApp's 24-hour window is closed: a template was needed
                    await self.store.finish(ks, km, "failed", reason="outside_window_63016")
                    return
                await self.store.finish(
                    ks, km, "canceled", reason=_CANCELED.get(err.code, f"error_{err.code}")
                )
                return
            # Twilio's answer for the interaction and the message's end: one step (finish_scheduled.lua).
            await self.store.finish(
                ks,
                km,
                "sent",
                interaction_sid=str(ix.get("sid") or ""),
                interaction_update=self.state.interactions.send_result_args(*twilio_answer(sent)),
            )
