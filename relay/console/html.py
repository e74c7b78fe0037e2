"""Server-rendered HTML for the console: one layout, escaped values, tables, forms with the CSRF
token, and an SVG bar chart. No script from anywhere else; what little script there is lives in
the page (live timeline)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from html import escape
from typing import Final

from aiohttp import web

__all__ = ["h", "page", "table", "form", "bars", "link"]

STYLE: Final = """
body{font-family:system-ui,sans-serif;margin:0;color:#111827;background:#f9fafb}
header{background:#1f2937;color:#fff;padding:.6rem 1rem;display:flex;gap:1rem;flex-wrap:wrap;align-items:center}
header a{color:#fff}header nav{display:flex;gap:1rem;flex-wrap:wrap}header form{margin-left:auto}
main{padding:1rem;max-width:72rem}
table{border-collapse:collapse;width:100%;margin:.5rem 0 1rem;background:#fff}
th,td{border:1px solid #e5e7eb;padding:.35rem .5rem;text-align:left;font-size:.9rem;vertical-align:top}
th{background:#f3f4f6}
form.inline{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end;margin:.5rem 0 1rem}
label{display:block;font-size:.8rem}
input,select{padding:.35rem;font-size:.95rem;max-width:100%}
button{padding:.35rem .8rem;font-size:.95rem;cursor:pointer}
:focus-visible{outline:3px solid #f59e0b}
.error{background:#fee2e2;border:1px solid #ef4444;padding:.5rem;margin:.5rem 0}
.ok{background:#dcfce7;border:1px solid #22c55e;padding:.5rem;margin:.5rem 0}
ol.timeline{list-style:none;padding:0}ol.timeline li{background:#fff;border:1px solid #e5e7eb;margin:.3rem 0;padding:.4rem .6rem}
.muted{color:#6b7280;font-size:.8rem}
@media (max-width:40rem){th,td{font-size:.8rem;padding:.25rem}}
"""


def h(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def link(href: str, text: object) -> str:
    return f'<a href="{h(href)}">{h(text)}</a>'


def page(title: str, body: str, *, who: str | None = None, csrf: str = "", status: int = 200) -> web.Response:
    nav = ""
    if who is not None:
        nav = (
            '<nav aria-label="console"><a href="/console">Services</a><a href="/console/audit">Audit</a>'
            '<a href="/console/keys">Keys</a></nav>'
            f'<form method="post" action="/console/logout"><input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<span class="muted" style="color:#d1d5db">{h(who)}</span> <button>Sign out</button></form>'
        )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} - Maskline console</title><style>{STYLE}</style></head><body>"
        f"<header><strong>Maskline console</strong>{nav}</header>"
        f"<main><h1>{h(title)}</h1>{body}</main></body></html>"
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline' 'self'; "
            "img-src 'self' data:; frame-ancestors 'none'",
            "Referrer-Policy": "same-origin",
        },
    )


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, caption: str = "", empty: str = "none"
) -> str:
    """`rows` hold HTML (escape values with h() or build them with link())."""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        body = f'<tr><td colspan="{len(headers)}" class="muted">{h(empty)}</td></tr>'
    head = "".join(f'<th scope="col">{h(x)}</th>' for x in headers)
    cap = f"<caption>{h(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def form(
    action: str,
    fields: Sequence[tuple[str, str, str]],
    *,
    submit: str,
    csrf: str = "",
    method: str = "post",
    values: dict[str, str] | None = None,
) -> str:
    """fields: (name, label, input type). POST forms carry the CSRF token."""
    values = values or {}
    parts = []
    for name, label, kind in fields:
        ident = f"f-{action.strip('/').replace('/', '-')}-{name}"
        parts.append(
            f'<div><label for="{h(ident)}">{h(label)}</label>'
            f'<input id="{h(ident)}" name="{h(name)}" type="{h(kind)}" value="{h(values.get(name, ""))}"></div>'
        )
    token = f'<input type="hidden" name="csrf" value="{h(csrf)}">' if method == "post" else ""
    return (
        f'<form class="inline" method="{method}" action="{h(action)}">{token}{"".join(parts)}'
        f"<button>{h(submit)}</button></form>"
    )


def bars(title: str, items: Sequence[tuple[str, int, int]]) -> str:
    """A horizontal bar chart (SVG): label, in use, reserved-or-other; with a text table fallback
    for screen readers."""
    if not items:
        return '<p class="muted">nothing to chart yet</p>'
    top = max(max(a + b for _, a, b in items), 1)
    row_h, width, label_w = 22, 520, 140
    out = [
        f'<svg role="img" aria-label="{h(title)}" viewBox="0 0 {width + label_w + 60} {row_h * len(items) + 10}" '
        'style="max-width:100%;background:#fff;border:1px solid #e5e7eb">'
    ]
    for i, (label, used, other) in enumerate(items):
        y = 5 + i * row_h
        w_used, w_other = used * width // top, other * width // top
        out.append(f'<text x="4" y="{y + 15}" font-size="12">{h(label)}</text>')
        out.append(f'<rect x="{label_w}" y="{y + 3}" width="{w_used}" height="14" fill="#2563eb"/>')
        out.append(f'<rect x="{label_w + w_used}" y="{y + 3}" width="{w_other}" height="14" fill="#93c5fd"/>')
        out.append(f'<text x="{label_w + w_used + w_other + 4}" y="{y + 15}" font-size="12">{used}</text>')
    out.append("</svg>")
    return "".join(out)
