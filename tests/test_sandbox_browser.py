"""The sandbox in a real browser (headless Chromium, driven by Playwright): the phones page of
`maskline dev`, texting and calling between two simulated phones through a session, with the
simulated Twilio posting signed webhooks and carrying out Maskline's TwiML. Screenshots go to
.artifacts/ (MASKLINE_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from core.settings import Settings
from maskline.dev import DEMO_NUMBERS, DEMO_PHONES, Sandbox, refusal

ARTIFACTS = Path(
    os.environ.get("MASKLINE_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / ".artifacts")
)
CUSTOMER, COURIER = DEMO_PHONES


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium binary for the browser tests: run `make browser` (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def sandbox(settings: Settings, redis: aioredis.Redis, pg: asyncpg.Pool) -> AsyncIterator[Sandbox]:
    box = await Sandbox.start(
        settings, phones_port=_free_port(), redis=redis, pg=pg, background=False, audit_writer=True
    )
    try:
        yield box
    finally:
        await box.stop()


@pytest.fixture
async def page(sandbox: Sandbox) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        try:
            browser = await p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        except Exception as err:  # noqa: BLE001 - say why the browser would not start
            pytest.fail(f"cannot start headless Chromium for the browser tests: {err}")
        context = await browser.new_context(viewport={"width": 1100, "height": 800}, accept_downloads=True)
        page = await context.new_page()
        await page.goto(f"{sandbox.phones_url}/phones")
        try:
            yield page
        finally:
            await browser.close()


def _phone(page: object, number: str) -> object:
    return page.locator(f'section.phone[data-phone="{number}"]')  # type: ignore[attr-defined]


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def _auth(sandbox: Sandbox) -> dict[str, str]:
    sid, secret = sandbox.api_key or ("", "")
    return {"Authorization": aiohttp.encode_basic_auth(sid, secret)}


async def test_a_text_from_phone_a_arrives_on_phone_b_from_b_s_proxy_number(
    sandbox: Sandbox, page: object, artifacts: Path
) -> None:
    proxy = sandbox.proxies
    assert set(proxy) == set(DEMO_PHONES) and set(proxy.values()) <= set(DEMO_NUMBERS)
    customer, courier = _phone(page, CUSTOMER), _phone(page, COURIER)
    await customer.locator('input[name="To"]').fill(proxy[CUSTOMER])  # type: ignore[attr-defined]
    await customer.locator('input[name="Body"]').fill("Where are you? <b>not bold</b>")  # type: ignore[attr-defined]
    await customer.get_by_role("button", name="Send").click()  # type: ignore[attr-defined]

    arrived = courier.locator("li.in", has_text="Where are you? <b>not bold</b>")  # type: ignore[attr-defined]
    await arrived.wait_for(timeout=10_000)
    assert (await arrived.locator(".meta").inner_text()) == f"from {proxy[COURIER]}"
    assert await courier.locator("b").count() == 0  # shown as text, never as markup  # type: ignore[attr-defined]

    # The courier answers on the same thread; it reaches the customer from the customer's proxy.
    await courier.locator('input[name="To"]').fill(proxy[COURIER])  # type: ignore[attr-defined]
    await courier.locator('input[name="Body"]').fill("2 minutes away")  # type: ignore[attr-defined]
    await courier.locator('input[name="Body"]').press("Enter")  # type: ignore[attr-defined]
    reply = customer.locator("li.in", has_text="2 minutes away")  # type: ignore[attr-defined]
    await reply.wait_for(timeout=10_000)
    assert (await reply.locator(".meta").inner_text()) == f"from {proxy[CUSTOMER]}"
    await page.screenshot(path=str(artifacts / "sandbox-phones.png"), full_page=True)  # type: ignore[attr-defined]

    # Both texts are interactions of the session, as the API shows them.
    url = (
        f"{sandbox.settings.public_url}/v1/Services/{sandbox.service_sid}/Sessions/demo-delivery/Interactions"
    )
    async with aiohttp.ClientSession(headers=_auth(sandbox)) as http:
        for _ in range(50):  # the relayed texts' status callbacks come right after delivery
            async with http.get(url) as r:
                found = {i["data"]: i["outbound_resource_status"] for i in (await r.json())["interactions"]}
            if set(found.values()) == {"delivered"}:
                break
            await asyncio.sleep(0.1)
    assert sorted(orjson.loads(data)["body"] for data in found) == [
        "2 minutes away",
        "Where are you? <b>not bold</b>",
    ]
    assert set(found.values()) == {"delivered"}  # the simulator told Maskline, as Twilio would


async def test_a_call_rings_the_other_phone_with_the_proxy_number_and_ends_with_its_callbacks(
    sandbox: Sandbox, page: object
) -> None:
    proxy = sandbox.proxies
    customer, courier = _phone(page, CUSTOMER), _phone(page, COURIER)
    await courier.locator('input[name="To"]').fill(proxy[COURIER])  # type: ignore[attr-defined]
    await courier.get_by_role("button", name="Call").click()  # type: ignore[attr-defined]
    await customer.get_by_text(f"Call from {proxy[CUSTOMER]}", exact=True).wait_for(timeout=10_000)  # type: ignore[attr-defined]
    await customer.get_by_role("button", name="Answer").click()  # type: ignore[attr-defined]
    await courier.get_by_role("button", name="Hang up").wait_for(timeout=10_000)  # type: ignore[attr-defined]
    await customer.get_by_role("button", name="Hang up").click()  # type: ignore[attr-defined]
    await customer.get_by_text("call ended: completed", exact=True).wait_for(timeout=10_000)  # type: ignore[attr-defined]

    url = (
        f"{sandbox.settings.public_url}/v1/Services/{sandbox.service_sid}/Sessions/demo-delivery/Interactions"
    )
    async with aiohttp.ClientSession(headers=_auth(sandbox)) as http, http.get(url) as r:
        calls = [i for i in (await r.json())["interactions"] if i["type"] == "voice"]
    assert [c["outbound_resource_status"] for c in calls] == ["completed"]


async def test_a_session_made_in_the_console_relays_shows_live_and_is_in_the_audit_export(
    sandbox: Sandbox, page: Any, artifacts: Path
) -> None:
    first, second = "+14155550111", "+14155550112"
    sid, secret = sandbox.api_key or ("", "")
    await page.goto(f"{sandbox.settings.public_url}/console")
    await page.get_by_label("API key SID (SK...) or Account SID (AC...)").fill(sid)
    await page.get_by_label("Secret or Auth Token").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_role("link", name="sandbox-demo").click()
    await page.get_by_label("Unique name", exact=True).fill("order-42")
    await page.get_by_label("First participant (E.164)").fill(first)
    await page.get_by_label("Second participant (E.164)").fill(second)
    await page.get_by_role("button", name="Create session").click()
    await page.get_by_role("heading", name="Session order-42").wait_for()
    proxy = {
        number: await page.locator("tr", has_text=number).locator("td").nth(2).inner_text()
        for number in (first, second)
    }
    assert set(proxy.values()) <= set(DEMO_NUMBERS)

    # The phones (another tab): both added, the first texts its proxy number.
    phones = await page.context.new_page()
    await phones.goto(f"{sandbox.phones_url}/phones")
    for number in (first, second):
        await phones.get_by_label("Phone number (E.164)").fill(number)
        await phones.get_by_role("button", name="Add phone").click()
        await _phone(phones, number).wait_for()
    await _phone(phones, first).locator('input[name="To"]').fill(proxy[first])
    await _phone(phones, first).locator('input[name="Body"]').fill("order 42: ring twice")
    await _phone(phones, first).get_by_role("button", name="Send").click()
    arrived = _phone(phones, second).locator("li.in", has_text="order 42: ring twice")
    await arrived.wait_for(timeout=10_000)
    assert await arrived.locator(".meta").inner_text() == f"from {proxy[second]}"

    # The session page's timeline shows it without a reload.
    await page.locator("#timeline li", has_text="order 42: ring twice").wait_for(timeout=10_000)
    await page.locator("#status", has_text="in-progress").wait_for(timeout=5_000)  # refreshed too
    await page.screenshot(path=str(artifacts / "console-session.png"), full_page=True)
    session_sid = page.url.rsplit("/", 1)[1]

    # The audit log (the writer runs in the app): search the session, export CSV, find the row.
    for _ in range(50):
        await page.goto(f"{sandbox.settings.public_url}/console/audit?Session={session_sid}")
        if await page.locator("td", has_text="interaction.created").count():
            break
        await page.wait_for_timeout(200)
    async with page.expect_download() as download:
        await page.get_by_role("link", name="Export CSV").click()
    rows = list(csv.DictReader(io.StringIO((await (await download.value).path()).read_text())))
    texts = [r for r in rows if r["type"] == "interaction.created" and "order 42: ring twice" in r["data"]]
    assert texts and texts[0]["session_sid"] == session_sid


def test_the_sandbox_refuses_to_stand_in_front_of_the_real_twilio() -> None:
    assert refusal({"MASKLINE_TWILIO_API_URL": "https://api.twilio.com"}) is not None
    assert refusal({"MASKLINE_TWILIO_API_URL": "https://API.Twilio.com/"}) is not None
    assert refusal({"MASKLINE_TWILIO_API_URL": "http://127.0.0.1:9999"}) is None
    assert refusal({}) is None
