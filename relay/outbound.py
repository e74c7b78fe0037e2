"""Twilio's REST API for outgoing texts (`Messages.json`), async, with retries on 429 and 5xx.

HTTP Basic (AccountSid:AuthToken) is set by hand in the Authorization header: aiohttp's `auth=`
path warns on aiohttp 3.14 (see NOTES.md), and one header string per client is cheaper anyway."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from typing import Any, Final

import aiohttp

from core.errors import MasklineError
from pool.numbers import mask

__all__ = ["TwilioMessages", "TwilioSendError", "RETRY_STATUSES"]

log = logging.getLogger("maskline.outbound")

# Twilio's "slow down" and its transient server errors; every other 4xx is final.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})


class TwilioSendError(MasklineError):
    """Twilio refused the message (its own code, e.g. 21610) or stayed unavailable."""

    code = 20503
    status = 503


class TwilioMessages:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        api_url: str,
        account_sid: str,
        auth_token: str,
        attempts: int = 4,
        backoff_s: float = 0.2,
        timeout_s: float = 10.0,
    ) -> None:
        self.http = http
        self.url = f"{api_url.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json"
        token = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def send(
        self,
        *,
        to: str,
        from_: str,
        body: str,
        media_urls: Sequence[str] = (),
        status_callback: str | None = None,
    ) -> dict[str, Any]:
        """The created Message resource (Twilio's JSON). Raises TwilioSendError."""
        form: list[tuple[str, str]] = [("To", to), ("From", from_)]
        if body:
            form.append(("Body", body))
        form.extend(("MediaUrl", url) for url in media_urls)
        if status_callback:
            form.append(("StatusCallback", status_callback))
        last = "no attempt made"
        for attempt in range(self.attempts):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self.http.post(
                    self.url, data=form, headers=self.headers, timeout=self.timeout
                ) as resp:
                    payload = await _json(resp)
                    if resp.status < 300:
                        return payload
                    code = int(payload.get("code") or 20500)
                    message = str(payload.get("message") or resp.reason or "error")
                    if resp.status not in RETRY_STATUSES:
                        raise TwilioSendError(f"Twilio refused the message: {message}", code=code, status=400)
                    last = f"HTTP {resp.status} ({code} {message})"
                    retry_after = resp.headers.get("Retry-After", "")
                    if retry_after.isdigit():
                        await asyncio.sleep(min(float(retry_after), 5.0))
            except (aiohttp.ClientError, TimeoutError) as err:
                last = f"{type(err).__name__}: {err}"
            log.warning(
                "Messages.json to %s attempt %d/%d failed: %s", mask(to), attempt + 1, self.attempts, last
            )
        raise TwilioSendError(f"Twilio's Messages API stayed unavailable ({last}); retry later")


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return data if isinstance(data, dict) else {}
