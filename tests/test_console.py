"""The console over plain HTTP: sign-in with an API key (cookie HttpOnly, SameSite=Strict), CSRF
on every form, the key's scope and permissions on every page, nothing changed by a refused form."""

from __future__ import annotations

import re

import aiohttp
import orjson
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay

from relay.credentials import create_key


async def _sign_in(relay: Relay, sid: str, secret: str) -> tuple[aiohttp.ClientSession, str]:
    """A browser-like client signed in to the console, and the CSRF token of its pages."""
    http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
    async with http.get(relay.local + "/console/login") as r:
        pre = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert pre
    async with http.post(
        relay.local + "/console/login",
        data={"csrf": pre.group(1), "sid": sid, "secret": secret},
        allow_redirects=False,
    ) as r:
        assert r.status == 303, await r.text()
        cookie = r.headers.getall("Set-Cookie")
    session_cookie = next(c for c in cookie if c.startswith("ml_console="))
    assert (
        "HttpOnly" in session_cookie
        and "SameSite=Strict" in session_cookie
        and "Path=/console" in session_cookie
    )
    async with http.get(relay.local + "/console") as r:
        assert r.status == 200
        token = re.search(r'name="csrf" value="([^"]+)"', await r.text())
    assert token
    return http, token.group(1)


async def test_sign_in_then_create_a_session_with_the_csrf_token_and_never_without(relay: Relay) -> None:
    ks = await relay.service(UniqueName="console-demo")
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sid, secret = await create_key(relay.pg, "operator")
    http, csrf = await _sign_in(relay, sid, secret)
    try:
        async with http.get(relay.local + "/console") as r:
            assert "console-demo" in await r.text()
        form = {"UniqueName": "order-7", "First": CUSTOMER, "Second": COURIER}
        url = f"{relay.local}/console/services/{ks}/sessions"
        async with http.post(url, data=form) as r:  # no CSRF token: refused, nothing created
            assert r.status == 403
        async with http.post(url, data={**form, "csrf": "forged"}) as r:
            assert r.status == 403
        status, listed = await relay.api("GET", f"/v1/Services/{ks}/Sessions")
        assert listed["sessions"] == []

        async with http.post(url, data={**form, "csrf": csrf}) as r:
            assert r.status == 200 and "/sessions/KC" in str(r.url)
            page = await r.text()
        assert "order-7" in page and CUSTOMER in page and COURIER in page
        status, listed = await relay.api("GET", f"/v1/Services/{ks}/Sessions")
        assert [s["unique_name"] for s in listed["sessions"]] == ["order-7"]

        # Search by a participant's number finds it; a bad request shows its code, not a trace.
        async with http.get(f"{relay.local}/console/services/{ks}/sessions", params={"q": CUSTOMER}) as r:
            assert "order-7" in await r.text()
        async with http.post(url, data={"csrf": csrf, "First": "not-a-number"}) as r:
            assert r.status == 400 and "20422" in await r.text()
    finally:
        await http.close()


async def test_scope_and_permissions_apply_and_signing_out_ends_the_session(relay: Relay) -> None:
    mine = await relay.service(UniqueName="mine")
    theirs = await relay.service(UniqueName="theirs")
    sid, secret = await create_key(relay.pg, "scoped", service_sids=[mine])
    http, csrf = await _sign_in(relay, sid, secret)
    try:
        async with http.get(relay.local + "/console") as r:
            text = await r.text()
        assert "mine" in text and "theirs" not in text
        async with http.get(f"{relay.local}/console/services/{theirs}") as r:
            assert r.status == 404
        async with http.get(f"{relay.local}/console/audit") as r:
            assert r.status == 403  # a proxy key reads no audit log
        async with http.get(f"{relay.local}/console/keys") as r:
            assert r.status == 403  # a scoped key manages no keys
        async with http.post(f"{relay.local}/console/logout", data={"csrf": csrf}) as r:
            assert r.url.path == "/console/login"
        async with http.get(relay.local + "/console", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/login"
    finally:
        await http.close()


async def test_a_wrong_secret_is_refused_and_a_revoked_key_is_signed_out(relay: Relay) -> None:
    sid, secret = await create_key(relay.pg, "soon revoked")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(relay.local + "/console/login") as r:
            pre = re.search(r'name="csrf" value="([^"]+)"', await r.text())
        assert pre
        data = {"csrf": pre.group(1), "sid": sid, "secret": secret + "x"}
        async with http.post(relay.local + "/console/login", data=data) as r:
            assert r.status == 401 and "wrong secret" in await r.text()
    http, _ = await _sign_in(relay, sid, secret)
    try:
        status, _ = await relay.api("GET", "/v1/Services")
        await relay.pg.execute("UPDATE api_keys SET date_revoked = now() WHERE sid = $1", sid)
        async with http.get(relay.local + "/console", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/console/login"
    finally:
        await http.close()


async def test_numbers_are_added_and_a_number_erased_only_once_confirmed(relay: Relay) -> None:
    ks = await relay.service(UniqueName="erasing")
    sid, secret = await create_key(relay.pg, "compliance", permissions=frozenset({"proxy", "audit"}))
    http, csrf = await _sign_in(relay, sid, secret)
    try:
        for number in (PROXY_A, PROXY_B):
            url = f"{relay.local}/console/services/{ks}/numbers"
            async with http.post(url, data={"csrf": csrf, "PhoneNumber": number}) as r:
                assert r.status == 200 and number in await r.text()
        async with http.post(url, data={"csrf": csrf, "PhoneNumber": PROXY_A}) as r:
            assert r.status == 400 and "80601" in await r.text()  # already in a pool
        sess = await relay.session(ks, CUSTOMER, COURIER)
        await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "my address is 1 Main St")

        erase = f"{relay.local}/console/audit/erase"
        async with http.post(erase, data={"csrf": csrf, "Number": CUSTOMER, "Confirm": COURIER}) as r:
            assert r.status == 400 and "nothing was erased" in await r.text()
        status, _ = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}")
        assert status == 200
        async with http.post(erase, data={"Number": CUSTOMER, "Confirm": CUSTOMER}) as r:
            assert r.status == 403  # no CSRF token: refused
        async with http.post(erase, data={"csrf": csrf, "Number": CUSTOMER, "Confirm": CUSTOMER}) as r:
            page = await r.text()
            assert r.status == 200 and "Erased" in page and "no copy left" in page
        status, _ = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}")
        assert status == 404
    finally:
        await http.close()


async def test_the_pool_page_shows_cooling_pairs_and_charts_refusals_for_lack_of_a_free_number(
    relay: Relay,
) -> None:
    ks = await relay.service(UniqueName="tiny-pool")
    await relay.numbers(ks, PROXY_A)
    first = await relay.session(ks, CUSTOMER, COURIER)
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{first['sid']}", {"Status": "closed"})
    assert status == 200  # both pairs now cool off (default 4 h)
    form = [("Participants", orjson.dumps({"Identifier": CUSTOMER}).decode())]
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
    assert status == 400 and body["code"] == 80208  # the customer already holds the only number
    sid, secret = await create_key(relay.pg, "operator")
    http, _ = await _sign_in(relay, sid, secret)
    try:
        async with http.get(f"{relay.local}/console/services/{ks}") as r:
            page = await r.text()
        assert "refusals per hour" in page and "no request was refused" not in page
        row = re.search(r"<tr><td>US</td><td>1</td><td>0</td><td>(\d+)</td></tr>", page)
        assert row and row.group(1) == "2"  # per country: 1 number, 0 pairs in use, 2 cooling
    finally:
        await http.close()
