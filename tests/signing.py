"""Signed webhooks exactly as Twilio sends them (X-Twilio-Signature over URL + sorted form params)."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from twilio.request_validator import RequestValidator

__all__ = ["sign", "post_webhook"]


def sign(url: str, params: Mapping[str, str], auth_token: str) -> str:
    """The X-Twilio-Signature Twilio would send for a form POST of params to url."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


async def post_webhook(
    session: aiohttp.ClientSession,
    url: str,
    params: Mapping[str, str],
    auth_token: str,
    *,
    signed_url: str | None = None,
) -> aiohttp.ClientResponse:
    """POST params form-encoded to url with Twilio's signature; the body is read before returning.

    Twilio signs the URL configured on the number; pass signed_url when that differs from the
    address the test server actually listens on (e.g. behind a proxy).
    """
    headers = {
        "X-Twilio-Signature": sign(signed_url or url, params, auth_token),
        # What Twilio's webhook requests carry; some code branches on the content type.
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "User-Agent": "TwilioProxy/1.1",
    }
    async with session.post(url, data=dict(params), headers=headers) as response:
        await response.read()  # cached: .text() / .json() still work after the connection is released
    return response
