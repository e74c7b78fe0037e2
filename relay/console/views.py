"""The console's pages under /console: Services and their pool, sessions (search, create, a page
with participants and a live interaction timeline), the audit log (search, export, verify) and
API keys. Every page acts as the signed-in key (its permissions and Service scope apply, through
the same helpers the REST API uses); every POST carries the CSRF token."""

from __future__ import annotations

import base64
import functools
import secrets
from collections import defaultdict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlencode

import orjson
from aiohttp import web

from audit.queries import query_events
from core import keys
from core.errors import MasklineError
from core.paging import PageRequest
from relay.api import services as services_api
from relay.api.common import service_sid, session_sid
from relay.api.interactions import every_interaction
from relay.console import auth
from relay.console.html import bars, form, h, link, page, table
from relay.login_limits import TooManyAttempts
from relay.state import API_KEY, NUMBERS, PG, REDIS, RELAY, SERVICES, SESSIONS, VERIFIER, VIA
from sessions.models import ParticipantRequest

__all__ = ["routes", "console", "console_page"]

routes = web.RouteTableDef()
Handler = Callable[[web.Request, auth.Console], Awaitable[web.StreamResponse]]
PRE_COOKIE: Final = "ml_console_pre"  # the sign-in form's own CSRF token (double submit)
LIST_SIZE: Final = 50
SESSION_EVENTS: Final = ("session.created", "participant.added")


def console(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Signed in (else to the sign-in page), CSRF-checked on POST, acting as the key; a
    MasklineError becomes the page's error box with its Twilio-style code and status."""

    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        who = await auth.signed_in(request)
        if who is None:
            raise web.HTTPSeeOther("/console/login")
        if request.method == "POST":
            await auth.check_csrf(request, who)
        request[API_KEY] = who.key
        request[VIA] = "console"  # how audit reads are recorded (relay/api/audit.py)
        try:
            return await handler(request, who)
        except MasklineError as err:
            box = f'<div class="error" role="alert">{h(err.message)} (code {err.code})</div>'
            return console_page(
                who, "Cannot do that", box + '<p><a href="/console">Back to the console</a></p>', err.status
            )

    return wrapped


def console_page(who: auth.Console, title: str, body: str, status: int = 200) -> web.Response:
    return page(title, body, who=f"{who.key.friendly_name} ({who.key.sid})", csrf=who.csrf, status=status)


# ------------------------------------------------------------------------------ sign-in


@routes.get("/console/login")
async def login_page(request: web.Request) -> web.Response:
    return _login(request)


def _login(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    pre = request.cookies.get(PRE_COOKIE) or secrets.token_urlsafe(18)
    box = f'<div class="error" role="alert">{h(error)}</div>' if error else ""
    fields = [
        ("sid", "API key SID (SK...) or Account SID (AC...)", "text"),
        ("secret", "Secret or Auth Token", "password"),
    ]
    response = page(
        "Sign in", box + form("/console/login", fields, submit="Sign in", csrf=pre), status=status
    )
    response.set_cookie(PRE_COOKIE, pre, path="/console", httponly=True, samesite="Strict", max_age=3600)
    return response


@routes.post("/console/login")
async def login(request: web.Request) -> web.Response:
    data = await request.post()
    pre = request.cookies.get(PRE_COOKIE, "")
    if not pre or data.get("csrf") != pre:
        return _login(request, "The sign-in form expired; try again.", status=403)
    sid, secret = str(data.get("sid", "")).strip(), str(data.get("secret", ""))
    header = "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()
    try:
        key = await request.app[VERIFIER].authenticate(header, request.remote or "")
    except TooManyAttempts as err:
        return _login(request, err.message, status=429)
    if key is None:
        return _login(request, "Unknown key SID or wrong secret.", status=401)
    response = web.HTTPSeeOther("/console")
    await auth.start(request, key, response)
    response.del_cookie(PRE_COOKIE, path="/console")
    raise response


@routes.post("/console/logout")
@console
async def logout(request: web.Request, who: auth.Console) -> web.StreamResponse:
    response = web.HTTPSeeOther("/console/login")
    await auth.end(request, who, response)
    raise response


# ------------------------------------------------------------------------------ Services and pool


@routes.get("/console")
@console
async def services(request: web.Request, who: auth.Console) -> web.StreamResponse:
    found = await request.app[SERVICES].list(PageRequest(size=200), only=who.key.service_sids)
    rows = [
        (link(f"/console/services/{s['sid']}", s["unique_name"] or s["sid"]), h(s["sid"]))
        for s in found.items
    ]
    return console_page(who, "Services", table(["Service", "SID"], rows, empty="no Service yet"))


@routes.get("/console/services/{ServiceSid}")
@console
async def service(request: web.Request, who: auth.Console) -> web.StreamResponse:
    ks = await service_sid(request)
    row = await request.app[SERVICES].get(ks)
    numbers = (await request.app[NUMBERS].list(ks, PageRequest(size=1000))).items
    cooling = await _cooling(request, ks)
    per_country: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for n in numbers:
        per_country[n["iso_country"]][0] += int(n["in_use"])
        per_country[n["iso_country"]][1] += 1
        per_country[n["iso_country"]][2] += cooling.get(n["phone_number"], 0)
    number_rows = [
        (
            h(n["phone_number"]),
            h(n["iso_country"]),
            h(", ".join(k for k, v in sorted((n.get("capabilities") or {}).items()) if v) or "-"),
            h(n["in_use"]),
            h(cooling.get(n["phone_number"], 0)),
            "reserved" if n["is_reserved"] else "",
        )
        for n in numbers
    ]
    base = f"/console/services/{ks}"
    body = [
        f'<p class="muted">{h(ks)}</p>',
        "<h2>Find a session</h2>",
        form(
            f"{base}/sessions",
            [("q", "Unique name, participant number or proxy number", "search")],
            submit="Search",
            method="get",
        ),
        "<h2>New session</h2>",
        form(
            f"{base}/sessions",
            [
                ("UniqueName", "Unique name", "text"),
                ("First", "First participant (E.164)", "tel"),
                ("Second", "Second participant (E.164)", "tel"),
            ],
            submit="Create session",
            csrf=who.csrf,
        ),
        "<h2>Add a proxy number</h2>",
        form(
            f"{base}/numbers",
            [
                ("PhoneNumber", "Number (E.164)", "tel"),
                ("Sid", "or its PN sid in the Twilio account", "text"),
            ],
            submit="Add number",
            csrf=who.csrf,
        ),
        "<h2>Pool utilisation</h2>",
        '<p class="muted">Per proxy number: pairs held by live sessions (dark) and pairs cooling off after their '
        "session closed (light); a number serves many pairs at once, one per participant.</p>",
        bars(
            "pairs in use and cooling per number",
            [(n["phone_number"], int(n["in_use"]), cooling.get(n["phone_number"], 0)) for n in numbers],
        ),
        "<h3>Pool exhausted, last 24 hours</h3>",
        await _exhaustion_chart(request, ks),
        table(
            ["Country", "Numbers", "Pairs in use", "Cooling"],
            [(h(c), h(v[1]), h(v[0]), h(v[2])) for c, v in sorted(per_country.items())],
        ),
        table(
            ["Number", "Country", "Capabilities", "Pairs in use", "Cooling", ""],
            number_rows,
            caption="Proxy numbers",
        ),
    ]
    return console_page(who, f"Service {row['unique_name'] or ks}", "".join(body))


# ------------------------------------------------------------------------------ sessions


async def _cooling(request: web.Request, ks: str) -> dict[str, int]:
    """Pairs cooling off per proxy number (pool/lua/_pool.lua release_pair: `ml:{KS}:cooling`)."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    members = await request.app[REDIS].zrangebyscore(keys.cooling(ks), now_ms, "+inf")
    counts: dict[str, int] = defaultdict(int)
    for member in members:
        counts[str(member).partition(" ")[0]] += 1
    return counts


async def _exhaustion_chart(request: web.Request, ks: str) -> str:
    """Requests refused for lack of a free number (80207, 80208), per hour (pool/lua/_pool.lua)."""
    raw = await request.app[REDIS].hgetall(keys.exhausted(ks))
    counts = {int(h): int(n) for h, n in raw.items()}
    now_hour = int(datetime.now(UTC).timestamp()) // 3600
    hours = range(now_hour - 23, now_hour + 1)
    if not any(counts.get(h) for h in hours):
        return '<p class="muted">no request was refused for lack of a free number</p>'
    label = [datetime.fromtimestamp(h * 3600, UTC).strftime("%d %H:00") for h in hours]
    return bars("refusals per hour (UTC)", [(label[i], counts.get(h, 0), 0) for i, h in enumerate(hours)])


@routes.post("/console/services/{ServiceSid}/numbers")
@console
async def add_number(request: web.Request, who: auth.Console) -> web.StreamResponse:
    """The API's own POST PhoneNumbers (its checks, the Twilio account lookup of a PN sid)."""
    await services_api.add_number(request)
    raise web.HTTPSeeOther(f"/console/services/{await service_sid(request)}")


@routes.get("/console/services/{ServiceSid}/sessions")
@console
async def find_sessions(request: web.Request, who: auth.Console) -> web.StreamResponse:
    ks = await service_sid(request)
    q = request.query.get("q", "").strip()[:64]
    sids = (
        await _matching_sessions(request, ks, q)
        if q
        else [
            s["sid"]
            for s in (await request.app[SESSIONS].list_sessions(ks, PageRequest(size=LIST_SIZE))).items
        ]
    )
    rows = []
    for kc in sids[:LIST_SIZE]:
        try:
            s = await request.app[SESSIONS].get_session(ks, kc)
        except MasklineError:
            continue  # no longer in Redis (expired and pruned): the audit log has it
        rows.append(
            (
                link(f"/console/services/{ks}/sessions/{kc}", s.get("unique_name") or kc),
                h(s.get("status")),
                h(kc),
            )
        )
    title = f"Sessions matching {q!r}" if q else "Recent sessions"
    return console_page(who, title, table(["Session", "Status", "SID"], rows, empty="no session found"))


async def _matching_sessions(request: web.Request, ks: str, q: str) -> list[str]:
    """Sessions by unique name; or by number: the live pairs of a participant number (one MGET of
    (number, proxy) over the pool, exact and immediate), then the audit log's index of numbers
    (GIN) for sessions where it is the proxy number or that the pool no longer pairs."""
    if not q.startswith("+"):
        try:
            return [await request.app[SESSIONS].resolve(ks, q)]
        except MasklineError:
            return []
    redis = request.app[REDIS]
    proxies = [str(p) for p in await redis.hvals(keys.number_sids(ks))]
    holders = await redis.mget([keys.pair(ks, q, p) for p in proxies]) if proxies else []
    found = [str(h).partition(":")[0] for h in holders if h]
    events, _ = await query_events(
        request.app[PG], service_sids={ks}, number=q, types=SESSION_EVENTS, limit=LIST_SIZE * 4
    )
    found += [e.session_sid for e in reversed(events) if e.session_sid]
    return list(dict.fromkeys(found))


@routes.post("/console/services/{ServiceSid}/sessions")
@console
async def create_session(request: web.Request, who: auth.Console) -> web.StreamResponse:
    ks = await service_sid(request)
    data = await request.post()
    people = [str(data.get(f, "")).strip() for f in ("First", "Second")]
    view = await request.app[SESSIONS].create_session(
        ks,
        unique_name=str(data.get("UniqueName", "")).strip()[:191],
        participants=[ParticipantRequest(identifier=p) for p in people if p],
    )
    raise web.HTTPSeeOther(f"/console/services/{ks}/sessions/{view['sid']}")


@routes.get("/console/services/{ServiceSid}/sessions/{SessionSid}")
@console
async def session_page(request: web.Request, who: auth.Console) -> web.StreamResponse:
    ks = await service_sid(request)
    kc = await session_sid(request, ks)
    store = request.app[SESSIONS]
    s = await store.get_session(ks, kc)
    parts = await store.list_participants(ks, kc)
    people = [
        (
            h(p.get("friendly_name")),
            h(p.get("identifier")),
            # PIN mode: the shared FallbackNumber and the participant's PIN on it
            h(p.get("proxy_identifier")) + (f" (PIN {h(p['pin'])})" if p.get("pin") else ""),
            h(p.get("sid")),
        )
        for p in parts
    ]
    timeline = f"/console/services/{ks}/sessions/{kc}/timeline"
    body = (
        f'<p>Status <strong id="status">{h(s.get("status"))}</strong>; unique name {h(s.get("unique_name") or "-")}; '
        f'<span class="muted">{h(kc)}</span></p>'
        + table(["Name", "Number", "Proxy number", "SID"], people, caption="Participants")
        + '<h2>Interactions</h2><p class="muted">Newest first; updates live.</p>'
        + f'<ol class="timeline" id="timeline" aria-live="polite">{await _timeline(request, ks, kc)}</ol>'
        + f'<p><a href="/console/audit?{urlencode({"Session": kc})}">This session in the audit log</a></p>'
        + "<script>setInterval(async()=>{const r=await fetch("
        + orjson.dumps(timeline).decode()
        + ");if(r.ok){document.getElementById('timeline').innerHTML=await r.text();"
        + "document.getElementById('status').textContent=r.headers.get('X-Session-Status')||'';}},2000);</script>"
    )
    return console_page(who, f"Session {s.get('unique_name') or kc}", body)


@routes.get("/console/services/{ServiceSid}/sessions/{SessionSid}/timeline")
@console
async def timeline(request: web.Request, who: auth.Console) -> web.StreamResponse:
    """The timeline's items, and the session's status in X-Session-Status (the page refreshes both)."""
    ks = await service_sid(request)
    kc = await session_sid(request, ks)
    status = str((await request.app[SESSIONS].get_session(ks, kc)).get("status") or "")
    return web.Response(
        text=await _timeline(request, ks, kc),
        content_type="text/html",
        headers={"Cache-Control": "no-store", "X-Session-Status": status},
    )


async def _timeline(request: web.Request, ks: str, kc: str) -> str:
    found = await request.app[RELAY].interactions.list(ks, kc, PageRequest(size=100))
    rows = found.items if found is not None else (await every_interaction(request, ks, kc) or [])[:100]
    items = []
    for i in rows:
        try:
            data: dict[str, Any] = orjson.loads(i.get("data") or "{}")
        except orjson.JSONDecodeError:  # an erased subject's text, as the audit log gives it
            data = {"body": str(i.get("data"))}
        what = data.get("body") if i.get("type") == "message" else f"call ({data.get('duration', '0')} s)"
        items.append(
            f'<li><span class="muted">{h(_when(i.get("created_ms")))} {h(i.get("type"))} '
            f"{h(i.get('inbound_resource_status'))} -> {h(i.get('outbound_resource_status'))}</span><br>{h(what)}</li>"
        )
    return "".join(items) or '<li class="muted">no interaction yet</li>'


def _when(ms: object) -> str:
    try:
        return datetime.fromtimestamp(int(str(ms)) / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return ""
