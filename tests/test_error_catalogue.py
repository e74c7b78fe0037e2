"""Every error code the API can answer with is in core.errors.CATALOGUE: Twilio's codes with the
meaning and title of Twilio's error catalogue, or Maskline's own in 89000-89099. docs/errors.md lists
exactly that table, and each Proxy rule the API enforces answers with its code through the API."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from api_helpers import RunningApp, running_app

from core.errors import CATALOGUE, MASKLINE_CODES

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "pool", "sessions", "audit", "relay", "maskline")
# Where a code is chosen: keyword or attribute, Lua fail()/nil-returns, the middleware's responses,
# and named constants.
SITES = re.compile(
    r"code\s*=\s*(\d{5})|fail\((\d{5})|return nil, (\d{5})|error_response\(\s*(\d{5})|Final = (\d{5})"
)
CUSTOMER, COURIER, HOST = "+14155550101", "+14155550102", "+14155550103"


def _codes_in_source() -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*")):
            if path.suffix not in (".py", ".lua"):
                continue
            for match in SITES.finditer(path.read_text()):
                code = int(next(g for g in match.groups() if g))
                found.setdefault(code, []).append(str(path.relative_to(ROOT)))
    return found


def test_every_code_the_source_can_answer_with_is_in_the_catalogue() -> None:
    found = _codes_in_source()
    assert len(found) > 15, "the scan found too few codes: has the way errors are raised changed?"
    unknown = {code: where for code, where in found.items() if code not in CATALOGUE}
    assert not unknown, f"codes outside core.errors.CATALOGUE (add them with Twilio's meaning): {unknown}"


def test_the_catalogue_is_twilios_codes_or_maskline_s_own_range() -> None:
    for code, (status, title) in CATALOGUE.items():
        assert 10000 <= code <= 99999 and 400 <= status <= 599 and title
        if code in MASKLINE_CODES:
            continue
        # Twilio's families used here: REST (20xxx), Messaging (21xxx), channels such as
        # WhatsApp (63xxx), Proxy (80xxx).
        assert code // 1000 in (20, 21, 63, 80), code


def test_docs_errors_md_lists_exactly_the_catalogue() -> None:
    rows = re.findall(
        r"^\| (\d{5}) \| (\d{3}) \| ([^|]+?) \|", (ROOT / "docs" / "errors.md").read_text(), re.M
    )
    documented = {
        int(code): (int(status), title.strip().strip("*").removeprefix("Maskline: "))
        for code, status, title in rows
    }
    assert documented == {code: (status, title) for code, (status, title) in CATALOGUE.items()}


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


async def _expect(api: RunningApp, method: str, path: str, data: dict[str, str] | None, code: int) -> None:
    status, body = await api.call(method, path, data)
    assert (status, body.get("code")) == (CATALOGUE[code][0], code), (method, path, data, body)
    assert body["more_info"].endswith(f"/{code}") and body["message"]


async def test_each_proxy_rule_answers_with_twilios_code_for_it(api: RunningApp) -> None:
    _, service = await api.call("POST", "/v1/Services", {"UniqueName": "rules", "AllowedCountries": "US"})
    ks = service["sid"]
    sessions = f"/v1/Services/{ks}/Sessions"
    await _expect(api, "POST", sessions, {"Participants": f'{{"Identifier": "{CUSTOMER}"}}'}, 80205)
    await _expect(api, "POST", "/v1/Services", {"UniqueName": "rules"}, 80602)
    _, number = await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": "+14155550201"})
    await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": "+14155550202"})
    _, other = await api.call("POST", "/v1/Services", {"UniqueName": "other"})
    await _expect(
        api, "POST", f"/v1/Services/{other['sid']}/PhoneNumbers", {"PhoneNumber": "+14155550201"}, 80601
    )

    status, session = await api.call("POST", sessions, {"UniqueName": "order-1"})
    assert status == 201
    await _expect(api, "POST", sessions, {"UniqueName": "order-1"}, 80603)
    await _expect(api, "GET", f"{sessions}/order-404", None, 80308)
    parts = f"{sessions}/{session['sid']}/Participants"
    await _expect(api, "POST", parts, {"Identifier": "911"}, 89001)
    await _expect(api, "POST", parts, {"Identifier": "+447400123457"}, 89002)
    await _expect(api, "POST", parts, {"Identifier": "not a number"}, 20422)
    await _expect(api, "POST", parts, {"Identifier": CUSTOMER, "ProxyIdentifier": "+13125550100"}, 80605)
    _, customer = await api.call("POST", parts, {"Identifier": CUSTOMER})
    await _expect(api, "POST", parts, {"Identifier": CUSTOMER}, 80103)
    await api.call("POST", parts, {"Identifier": COURIER})
    await _expect(api, "POST", parts, {"Identifier": HOST}, 80609)
    await _expect(api, "POST", f"{parts}/{customer['sid']}/MessageInteractions", {}, 21602)
    in_use = customer["proxy_identifier"]
    number_sid = number["sid"] if number["phone_number"] == in_use else None
    if number_sid is None:
        _, listed = await api.call("GET", f"/v1/Services/{ks}/PhoneNumbers")
        number_sid = next(n["sid"] for n in listed["phone_numbers"] if n["phone_number"] == in_use)
    await _expect(api, "DELETE", f"/v1/Services/{ks}/PhoneNumbers/{number_sid}", None, 80611)
    await _expect(api, "POST", f"{sessions}/{session['sid']}", {"Status": "in-progress"}, 80608)
    await api.call("POST", f"{sessions}/{session['sid']}", {"Status": "closed"})
    await _expect(api, "POST", parts, {"Identifier": HOST}, 80607)
