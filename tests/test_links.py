"""Every `url` and link Maskline shows is a valid absolute URI that resolves: a client may follow any
of them (Twilio's clients follow `links` and `meta` URLs as they are)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from api_helpers import RunningApp, running_app

CUSTOMER, COURIER = "+14155550101", "+14155550102"


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


def _urls(value: Any) -> list[str]:
    """Every string under a `url`, `links` or `*_page_url` key of a resource or list, recursively."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and (key == "url" or key.endswith("_page_url")):
                found.append(item)
            elif key == "links" and isinstance(item, dict):
                found += [v for v in item.values() if isinstance(v, str)]
            else:
                found += _urls(item)
    elif isinstance(value, list):
        for item in value:
            found += _urls(item)
    return found


async def test_every_url_and_link_resolves(api: RunningApp) -> None:
    _, service = await api.call("POST", "/v1/Services", {"UniqueName": "links / ünïcode?"})
    ks = service["sid"]
    await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": "+14155550201"})
    await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": "+14155550202"})
    _, session = await api.call("POST", f"/v1/Services/{ks}/Sessions", {"UniqueName": "order 1/2"})
    parts = f"/v1/Services/{ks}/Sessions/{session['sid']}/Participants"
    _, customer = await api.call("POST", parts, {"Identifier": CUSTOMER})
    await api.call("POST", parts, {"Identifier": COURIER})
    for i in range(3):
        await api.call("POST", f"/v1/Services/{ks}/Sessions", {"UniqueName": f"more-{i}"})

    start = [
        "/v1/Services?PageSize=1",
        f"/v1/Services/{ks}",
        f"/v1/Services/{ks}/Sessions?PageSize=2",
        f"/v1/Services/{ks}/PhoneNumbers?PageSize=1",
        f"{parts}?PageSize=1",
        f"{parts}/{customer['sid']}",
    ]
    seen: set[str] = set()
    queue = [api.base + path for path in start]
    while queue:
        url = queue.pop()
        if url in seen:
            continue
        seen.add(url)
        parsed = urlsplit(url)
        assert parsed.scheme == "http" and parsed.netloc and " " not in url, url
        status, body = await api.call("GET", url.removeprefix(api.base))
        assert status == 200, (url, body)
        queue += [u for u in _urls(body) if u not in seen]
    assert len(seen) > 20, sorted(seen)
