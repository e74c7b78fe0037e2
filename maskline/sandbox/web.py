"""The simulated Twilio's HTTP side: the phones page (and its event stream) and Twilio's Messages
API, on a port of its own, as the real Twilio is a host of its own.

    GET  /phones                          the phones page (maskline/sandbox/phones.html)
    GET  /phones/events                   server-sent events: a snapshot, then every change
    POST /phones                          Number=...: add a phone
    POST /phones/{number}/text            To=..., Body=...: the phone texts a proxy number
    POST /phones/{number}/call            To=...: the phone calls a proxy number
    POST /calls/{sid}/answer|decline|hangup
    POST /2010-04-01/Accounts/{AC}/Messages.json   Twilio's Messages API (HTTP Basic: AC + token)
"""

from __future__ import annotations

import base64
import hmac
from importlib.resources import files
from typing import Any

import orjson
from aiohttp import web

from core.errors import MasklineError
from maskline.sandbox.simulator import Simulator

__all__ = ["simulator_app", "SIMULATOR"]

SIMULATOR: web.AppKey[Simulator] = web.AppKey("simulator", Simulator)
routes = web.RouteTableDef()


def simulator_app(sim: Simulator) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[SIMULATOR] = sim
    app.add_routes(routes)

    async def end_streams(app: web.Application) -> None:
        sim.close_streams()

    async def close(app: web.Application) -> None:
        await sim.aclose()

    app.on_shutdown.append(end_streams)
    app.on_cleanup.append(close)
    return app


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)  # type: ignore[no-any-return]
    except MasklineError as err:
        return web.json_response({"code": err.code, "message": str(err), "status": 400}, status=400)
    except KeyError as err:
        return web.json_response({"message": f"missing {err}", "status": 400}, status=400)


@routes.get("/")
async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/phones")


@routes.get("/phones")
async def phones_page(request: web.Request) -> web.Response:
    page = files("maskline.sandbox").joinpath("phones.html").read_text()
    return web.Response(text=page, content_type="text/html", headers={"Cache-Control": "no-store"})


@routes.get("/phones/events")
async def events(request: web.Request) -> web.StreamResponse:
    sim = request.app[SIMULATOR]
    queue = sim.subscribe()
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"})
    await response.prepare(request)
    try:
        await response.write(_sse({"kind": "snapshot", "phones": sim.phones}))
        while (event := await queue.get())["kind"] != "closing":
            await response.write(_sse(event))
    except (ConnectionResetError, RuntimeError):
        pass  # the page went away
    finally:
        sim.unsubscribe(queue)
    return response


def _sse(event: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(event) + b"\n\n"


@routes.post("/phones")
async def add_phone(request: web.Request) -> web.Response:
    form = await request.post()
    number = request.app[SIMULATOR].add_phone(str(form["Number"]))
    return web.json_response({"phone": number}, status=201)


@routes.post("/phones/{number}/text")
async def text(request: web.Request) -> web.Response:
    form = await request.post()
    await request.app[SIMULATOR].text(
        request.match_info["number"], str(form["To"]), str(form.get("Body", ""))
    )
    return web.Response(status=204)


@routes.post("/phones/{number}/call")
async def call(request: web.Request) -> web.Response:
    form = await request.post()
    placed = await request.app[SIMULATOR].call(request.match_info["number"], str(form["To"]))
    return web.json_response({"sid": placed.sid, "status": placed.status})


@routes.post("/calls/{sid}/{action:answer|decline|hangup}")
async def call_action(request: web.Request) -> web.Response:
    sim, sid, action = request.app[SIMULATOR], request.match_info["sid"], request.match_info["action"]
    if sid not in sim.calls:
        raise web.HTTPNotFound(text="no such call")
    if action == "answer":
        await sim.answer(sid)
    else:
        await sim.end(sid, "busy" if action == "decline" else "completed")
    return web.Response(status=204)


@routes.post("/2010-04-01/Accounts/{account}/Messages.json")
async def messages_api(request: web.Request) -> web.Response:
    sim = request.app[SIMULATOR]
    expected = "Basic " + base64.b64encode(f"{sim.account_sid}:{sim.auth_token}".encode()).decode()
    if request.match_info["account"] != sim.account_sid or not hmac.compare_digest(
        request.headers.get("Authorization", ""), expected
    ):
        return web.json_response({"code": 20003, "message": "Authenticate", "status": 401}, status=401)
    form = await request.post()
    fields = {k: str(v) for k, v in form.items()}
    if not fields.get("To"):
        return web.json_response(
            {"code": 21604, "message": "A 'To' phone number is required.", "status": 400}, status=400
        )
    media = [str(v) for v in form.getall("MediaUrl", [])]
    return web.json_response(await sim.send_message(fields, media), status=201)
