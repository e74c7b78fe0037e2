"""The console's compliance and admin pages: the audit log (search by number, session and time;
CSV / JSON Lines export streamed; verify the hash chains) for keys with the audit permission, and
API keys (list, create, revoke) for keys that see every Service. Searches and exports go through
the audit read API's own parsing, scoping and recording (relay/api/audit.py)."""

from __future__ import annotations

from typing import Final
from urllib.parse import urlencode

from aiohttp import web

from audit.queries import query_events
from audit.verify import verify
from core.events import emit_event
from relay.api.audit import export_response, parse_query, record_read
from relay.api.params import query_params
from relay.console import auth
from relay.console.html import form, h, table
from relay.console.views import console, console_page
from relay.credentials import create_key, revoke_key
from relay.state import ERASER, PG, REDIS

__all__ = ["routes"]

routes = web.RouteTableDef()
FILTERS: Final = ("Number", "Session", "Since", "Until")
SHOWN: Final = 200
KEYS: Final = """
SELECT sid, friendly_name, permissions, service_sids, date_created, date_revoked
  FROM api_keys ORDER BY date_created DESC LIMIT 500
"""


def _needs_audit(who: auth.Console) -> None:
    if not who.may_audit:
        raise web.HTTPForbidden(text="This key lacks the audit permission.")


@routes.get("/console/audit")
@console
async def audit(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_audit(who)
    given = {k: request.query[k] for k in FILTERS if request.query.get(k)}
    search = form(
        "/console/audit",
        [
            ("Number", "Number (E.164)", "tel"),
            ("Session", "Session SID (KC...)", "text"),
            ("Since", "Since (ISO 8601)", "text"),
            ("Until", "Until (ISO 8601)", "text"),
        ],
        submit="Search",
        method="get",
        values=given,
    )
    verify_form = (
        f'<form method="post" action="/console/audit/verify"><input type="hidden" name="csrf" value="{h(who.csrf)}">'
        "<button>Verify the hash chains</button></form>"
    )
    body = [search]
    if given:
        query = await parse_query(request, who.key, query_params(request))
        events, more = await query_events(request.app[PG], **query.filters(), limit=SHOWN)
        await record_read(request, who.key, query, "audit.queried", page_size=SHOWN, returned=len(events))
        rows = [
            (
                h(e.ts.strftime("%Y-%m-%d %H:%M:%S")),
                h(e.type),
                h(e.session_sid or ""),
                h(", ".join(e.numbers)),
                h(e.data.get("body", "")),
                h(e.flag or ""),
            )
            for e in events
        ]
        exports = " ".join(
            f'<a href="/console/audit/export.{fmt}?{h(urlencode(given))}" download>Export {fmt.upper()}</a>'
            for fmt in ("csv", "jsonl")
        )
        body.append(f"<p>{exports}</p>")
        body.append(
            table(
                ["Time (UTC)", "Event", "Session", "Numbers", "Text", "Flag"], rows, empty="no event matches"
            )
        )
        if more:
            body.append(f'<p class="muted">The first {SHOWN} events; export for all of them.</p>')
    body.append(verify_form)
    body.append(
        "<h2>Erase a number</h2><p>Removes the number from Redis, makes every stored event about it "
        "unreadable and takes it off block lists (docs/audit.md). It cannot be undone.</p>"
        + form(
            "/console/audit/erase",
            [
                ("Number", "Number to erase (E.164)", "tel"),
                ("Confirm", "Type the number again to confirm", "tel"),
            ],
            submit="Erase",
            csrf=who.csrf,
        )
    )
    return console_page(who, "Audit log", "".join(body))


@routes.post("/console/audit/erase")
@console
async def erase(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_audit(who)
    if who.key.service_sids is not None:
        raise web.HTTPForbidden(
            text="An erasure reaches every Service: only a key that sees every Service may erase."
        )
    data = await request.post()
    number, confirm = str(data.get("Number", "")).strip(), str(data.get("Confirm", "")).strip()
    back = '<p><a href="/console/audit">Back to the audit log</a></p>'
    if not number or number != confirm:
        box = '<div class="error" role="alert">The two numbers differ: nothing was erased.</div>'
        return console_page(who, "Erase a number", box + back, 400)
    done = await request.app[ERASER](number, f"console:{who.key.sid}")
    return console_page(
        who, "Erase a number", f'<div class="ok" role="status">Erased: {h(done)}.</div>' + back
    )


@routes.get("/console/audit/export.{fmt:csv|jsonl}")
@console
async def export(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_audit(who)
    return await export_response(request, request.match_info["fmt"])


@routes.post("/console/audit/verify")
@console
async def verify_chains(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_audit(who)
    scope = [None] if who.key.service_sids is None else sorted(who.key.service_sids)
    chains = events = 0
    broken = []
    for ks in scope:
        result = await verify(request.app[PG], service_sid=ks)
        chains, events = chains + result.chains, events + result.events
        broken += result.breaks
    if broken:
        box = f'<div class="error" role="alert">{len(broken)} chain(s) broken; first: {h(broken[0])}</div>'
    else:
        box = f'<div class="ok" role="status">All {chains} chain(s) intact: {events} event(s) verified.</div>'
    return console_page(
        who, "Audit log: verify", box + '<p><a href="/console/audit">Back to the audit log</a></p>'
    )


# ------------------------------------------------------------------------------ API keys


def _needs_admin(who: auth.Console) -> None:
    if who.key.service_sids is not None or not who.may_proxy:
        raise web.HTTPForbidden(text="Only a key that sees every Service manages API keys.")


@routes.get("/console/keys")
@console
async def keys_page(request: web.Request, who: auth.Console) -> web.StreamResponse:
    return await _keys(request, who)


async def _keys(request: web.Request, who: auth.Console, note: str = "") -> web.Response:
    _needs_admin(who)
    rows = []
    for r in await request.app[PG].fetch(KEYS):
        revoke = (
            f'<form method="post" action="/console/keys/{h(r["sid"])}/revoke"><input type="hidden" name="csrf" '
            f'value="{h(who.csrf)}"><button aria-label="Revoke {h(r["sid"])}">Revoke</button></form>'
            if r["date_revoked"] is None
            else "revoked"
        )
        scope = ", ".join(r["service_sids"]) if r["service_sids"] is not None else "every Service"
        rows.append(
            (
                h(r["friendly_name"]),
                h(r["sid"]),
                h(", ".join(r["permissions"])),
                h(scope),
                h(r["date_created"]),
                revoke,
            )
        )
    create = form(
        "/console/keys",
        [("name", "Name", "text"), ("permission", "Permission (proxy or audit)", "text")],
        submit="Create key",
        csrf=who.csrf,
        values={"permission": "proxy"},
    )
    return console_page(
        who,
        "API keys",
        note + create + table(["Name", "SID", "Permissions", "Services", "Created", ""], rows),
    )


@routes.post("/console/keys")
@console
async def new_key(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_admin(who)
    data = await request.post()
    name = str(data.get("name", "")).strip()[:255] or "console"
    permission = str(data.get("permission", "proxy")).strip()
    if permission not in ("proxy", "audit"):
        return await _keys(
            request, who, '<div class="error" role="alert">Permission must be proxy or audit.</div>'
        )
    sid, secret = await create_key(request.app[PG], name, permissions=frozenset({permission}))
    # Audited without the secret, as `maskline keys create` does; with who did it.
    data_out = {
        "sid": sid,
        "friendly_name": name,
        "permissions": [permission],
        "service_sids": None,
        "actor": who.key.sid,
    }
    await emit_event(request.app[REDIS], service_sid=None, type="key.created", data=data_out)
    note = f'<div class="ok" role="status">Key {h(sid)} created. Its secret, shown this once: <code>{h(secret)}</code></div>'
    return await _keys(request, who, note)


@routes.post("/console/keys/{sid}/revoke")
@console
async def revoke(request: web.Request, who: auth.Console) -> web.StreamResponse:
    _needs_admin(who)
    sid = request.match_info["sid"]
    if await revoke_key(request.app[PG], sid):
        await emit_event(
            request.app[REDIS], service_sid=None, type="key.revoked", data={"sid": sid, "actor": who.key.sid}
        )
    raise web.HTTPSeeOther("/console/keys")
