"""The published OpenAPI document (relay/openapi.json, served at /openapi.json) and the app's routes agree."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from maskline.server import create_app

DOCS = Path(__file__).resolve().parent.parent / "docs" / "openapi"
SERVED = Path(__file__).resolve().parent.parent / "relay" / "openapi.json"
# Callbacks Maskline hands to Twilio itself (status, dial outcome, whisper): not part of the API.
INTERNAL = ("/twilio/status", "/twilio/voice/", "/twilio/sms/")


def _routes(settings) -> set[tuple[str, str]]:
    app = create_app(settings, background=False)
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method == "HEAD" or path.startswith(INTERNAL):
            continue
        found.add((route.method.lower(), path))
    return found


def test_every_route_is_documented_and_every_documented_operation_exists(settings) -> None:
    sys.path.insert(0, str(DOCS))
    from build import build  # the committed document must be what build.py makes

    assert json.loads(SERVED.read_text()) == build(), "run: python docs/openapi/build.py"
    doc = build()
    documented = {
        (method, path.replace("{Sid}", "{X}"))
        for path, ops in doc["paths"].items()
        for method in ops
        if method in ("get", "post", "delete")
    }
    # The console's HTML pages are a UI, not API (docs/console.md documents them).
    served = {(m, p) for m, p in _routes(settings) if not p.startswith("/console")}

    # Path parameter names differ between the two ({Sid} vs {ServiceSid}); compare shapes.
    def shape(path: str) -> str:
        import re

        return re.sub(r"\{[^}]+\}", "{}", path)

    assert {(m, shape(p)) for m, p in served} == {(m, shape(p)) for m, p in documented}


async def test_the_document_is_served_without_credentials_naming_this_deployment(settings, redis, pg) -> None:
    from api_helpers import running_app

    async with running_app(settings, redis, pg) as api:
        status, doc = await api.call("GET", "/openapi.json", auth=False)
    assert status == 200
    assert doc == {**build_document(), "servers": doc["servers"]}
    assert doc["servers"][0]["url"] == settings.public_url
    assert "/v1/Services/{ServiceSid}/Sessions" in doc["paths"] and "/openapi.json" in doc["paths"]


def build_document() -> dict:
    sys.path.insert(0, str(DOCS))
    from build import build

    return build()
