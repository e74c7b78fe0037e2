"""The operators' and compliance officers' console: server-rendered pages under /console."""

from __future__ import annotations

from aiohttp import web

from relay.console import audit_views, views

__all__ = ["add_console"]


def add_console(app: web.Application) -> None:
    app.add_routes(views.routes)
    app.add_routes(audit_views.routes)
