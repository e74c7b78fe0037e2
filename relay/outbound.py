"""Twilio's REST API for outgoing texts (`Messages.json`), async, with retries on 429 and 5xx.

HTTP Basic (AccountSid:AuthToken) is set by hand in the Authorization header: aiohttp's `auth=`
path warns on aiohttp 3.14 (see NOTES.md), and one header string per client is cheaper anyway."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from core.errors import MasklineError
from pool.numbers import mask

__all__ = [
    "TwilioMessages",
    "TwilioSendError",
    "RETRY_STATUSES",
    "TwilioRefused",
    "TwilioUnavailable",
    "twilio_request",
]

log = logging.getLogger("maskline.outbound")

# Twilio's "slow down" and its transient server errors; every other 4xx is final.
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
FORM_TYPE: Final = "application/x-www-form-urlencoded"


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
        content_sid: str = "",
        content_variables: str = "",
    ) -> dict[str, Any]:
        """The created Message resource (Twilio's JSON). Raises TwilioSendError. A template
        (`content_sid`, Twilio's Content API: what WhatsApp requires outside its 24-hour window)
        is sent without Body and MediaUrl, as Twilio asks."""
        form: list[tuple[str, str]] = [("To", to), ("From", from_)]
        if content_sid:
            form.append(("ContentSid", content_sid))
            if content_variables:
                form.append(("ContentVariables", content_variables))
        else:
            if body:
                form.append(("Body", body))
            form.extend(("MediaUrl", url) for url in media_urls)
        if status_callback:
            form.append(("StatusCallback", status_callback))
        try:
            return await twilio_request(
                self.http,
                "POST",
                self.url,
                form=form,
                headers=self.headers,
                request_timeout=self.timeout,
                attempts=self.attempts,
                backoff_s=self.backoff_s,
                describe=f"Messages.json to {mask(to)}",
            )
        except TwilioRefused as err:
            raise TwilioSendError(
                f"Twilio refused the message: {err.message}", code=err.code, status=400
            ) from None
        except TwilioUnavailable as err:
            raise TwilioSendError(
                f"Twilio's Messages API stayed unavailable ({err.last}); retry later"
            ) from None


class TwilioRefused(Exception):
    """Twilio answered a final 4xx (not 429): retrying will not change its mind."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(f"HTTP {status} ({code} {message})")
        self.status, self.code, self.message = status, code, message


class TwilioUnavailable(Exception):
    """Twilio kept answering 429 / 5xx, or could not be reached, through every attempt."""

    def __init__(self, last: str) -> None:
        super().__init__(last)
        self.last = last


async def twilio_request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    form: list[tuple[str, str]] | None,
    headers: dict[str, str],
    request_timeout: aiohttp.ClientTimeout,
    attempts: int,
    backoff_s: float,
    describe: str,
) -> dict[str, Any]:
    """One call to Twilio's REST API: its JSON on success; TwilioRefused at once for a final 4xx;
    429, 5xx and network errors retried with exponential back-off (Retry-After honoured, up to
    5 s), then TwilioUnavailable. Each failed attempt is logged as `describe`."""
    last = "no attempt made"
    # The form encoded once, as aiohttp's FormData would (its machinery cost more than the rest of
    # a scheduled message's send: bench scheduled).
    body = urlencode(form).encode() if form is not None else None
    if body is not None:
        headers = {**headers, "Content-Type": FORM_TYPE}
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            async with http.request(method, url, data=body, headers=headers, timeout=request_timeout) as resp:
                payload = await _json(resp)
                if resp.status < 300:
                    return payload
                code = int(payload.get("code") or 80613)  # Twilio's "Downstream Request Rejected"
                message = str(payload.get("message") or resp.reason or "error")
                if resp.status not in RETRY_STATUSES:
                    raise TwilioRefused(resp.status, code, message)
                last = f"HTTP {resp.status} ({code} {message})"
                retry_after = resp.headers.get("Retry-After", "")
                if retry_after.isdigit():
                    await asyncio.sleep(min(float(retry_after), 5.0))
        except (aiohttp.ClientError, TimeoutError) as err:
            last = f"{type(err).__name__}: {err}"
        log.warning("%s attempt %d/%d failed: %s", describe, attempt + 1, attempts, last)
    raise TwilioUnavailable(last)


async def _json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        data = await resp.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        return {}
    return data if isinstance(data, dict) else {}
