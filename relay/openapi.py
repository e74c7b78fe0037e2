"""GET /openapi.json, unauthenticated: the API's OpenAPI document (relay/openapi.json, built by
docs/openapi/build.py from Twilio's Proxy v1 document plus Maskline's additions), its `servers`
set to this deployment's public URL. tests/test_openapi.py keeps it in step with the routes."""

from __future__ import annotations

import functools
from importlib import resources

import orjson
from aiohttp import web

from relay.state import SETTINGS

__all__ = ["routes", "document"]

routes = web.RouteTableDef()


@functools.cache
def document(public_url: str) -> bytes:
    doc = orjson.loads((resources.files("relay") / "openapi.json").read_bytes())
    doc["servers"] = [{"url": public_url, "description": "this Maskline (MASKLINE_PUBLIC_URL)"}]
    return orjson.dumps(doc)


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=document(request.app[SETTINGS].public_url), content_type="application/json")
