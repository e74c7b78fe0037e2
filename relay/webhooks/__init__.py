"""Twilio's webhooks: inbound texts and calls (inbound.py, with out_of_session.py), the callbacks
about relays in flight (status.py), all behind one signed-TwiML boundary (boundary.py)."""

from __future__ import annotations

from aiohttp.web import AbstractRouteDef

from relay.webhooks import inbound, status

__all__ = ["ROUTES"]

ROUTES: tuple[AbstractRouteDef, ...] = (*inbound.routes, *status.routes)
