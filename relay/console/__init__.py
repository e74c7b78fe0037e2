"""The operators' and compliance officers' console: server-rendered pages under /console."""

from __future__ import annotations

from aiohttp import web

from relay.console import audit_views, views
from relay.middleware import behind_boundary

__all__ = ["add_console"]


def add_console(app: web.Application) -> None:
    """The pages, each behind the API's error boundary (an error: a clean answer, never a traceback)."""
    app.add_routes(behind_boundary(views.routes))
    app.add_routes(behind_boundary(audit_views.routes))
