"""Bad input gets a clear 4xx naming what to fix: never a 500, never a traceback in the log, never
a half-done change or a mangled store. Each case here was a reproduced failure (a 500, or a value
stored with U+FFFD replacement characters); the app runs on a real port with real Redis and
Postgres (tests/relay_harness.py)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay
from twilio.request_validator import RequestValidator

from relay.credentials import create_key

FORM = "application/x-www-form-urlencoded"
# (case, Content-Type, body): bodies aiohttp itself cannot read (it raised inside
# request.post() / request.text(), or silently replaced invalid UTF-8 with U+FFFD).
FORM_CASES = [
    ("invalid UTF-8", FORM, b"From=%ff%fe&UniqueName=%ff%fe&Body=%ff"),
    ("bogus charset", FORM + "; charset=bogus-xx", b"From=x&UniqueName=x"),
    (
        "multipart without a boundary",
        "multipart/form-data",
        b'--x\r\nContent-Disposition: form-data; name="UniqueName"\r\n\r\nx\r\n--x--\r\n',
    ),
    (
        "multipart part without a name",
        "multipart/form-data; boundary=x",
        b"--x\r\nContent-Disposition: form-data\r\n\r\nx\r\n--x--\r\n",
    ),
]
JSON_CASES = [
    ("JSON with invalid UTF-8", "application/json", b'{"From": "\xff\xfe", "UniqueName": "\xff"}'),
    ("JSON with a bogus charset", "application/json; charset=bogus-xx", b'{"From": "x", "UniqueName": "x"}'),
]
BODY_CASES = FORM_CASES + JSON_CASES
# RFC 3986: unreserved, reserved and percent-encoded octets only.
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})*")
_LOGGERS = ("maskline", "aiohttp")


@pytest.fixture
def app_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def _quiet(log: pytest.LogCaptureFixture, *, at_most: int = 1) -> None:
    """No traceback, and at most `at_most` warning-or-worse lines of the app's loggers."""
    records = [r for r in log.records if r.name.startswith(_LOGGERS)]
    assert not [r for r in records if r.exc_info], [r.getMessage() for r in records]
    loud = [r for r in records if r.levelno >= logging.WARNING and not r.name.startswith("aiohttp.access")]
    assert len(loud) <= at_most, [r.getMessage() for r in loud]
    assert all("Traceback" not in r.getMessage() for r in records)
    log.clear()


async def _raw(
    relay: Relay,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> tuple[int, Any]:
    """One request with exactly these bytes; (status, JSON body or text)."""
    assert relay.http is not None
    sent = dict(relay.auth if auth else {})
    if content_type is not None:
        sent["Content-Type"] = content_type
    sent.update(headers or {})
    async with relay.http.request(method, relay.local + path, data=body, headers=sent) as resp:
        raw = await resp.read()
        if resp.content_type == "application/json":
            return resp.status, orjson.loads(raw)
        return resp.status, raw.decode("utf-8", "replace")


def _form(**params: str) -> bytes:
    return "&".join(f"{k}={v}" for k, v in params.items()).encode()


_READ = {"string": "get", "hash": "hgetall", "set": "smembers", "stream": "xlen", "list": "llen"}


async def _snapshot(relay: Relay) -> dict[str, Any]:
    """Everything a request could have written: every Redis key and its content (a stream's
    length), and the Postgres rows of Services and PhoneNumbers."""
    r = relay.redis
    stored: dict[str, Any] = {}
    for key in sorted(await r.keys("*")):
        if key.startswith("ml:apilimit:"):
            continue  # the API rate limit's request counters: bookkeeping, not a change
        kind = await r.type(key)
        stored[key] = await (r.zrange(key, 0, -1) if kind == "zset" else getattr(r, _READ[kind])(key))
    for table in ("services", "phone_numbers"):
        stored[table] = [dict(row) for row in await relay.pg.fetch(f"SELECT * FROM {table} ORDER BY sid")]
    return stored


async def _world(relay: Relay) -> dict[str, str]:
    """A Service with two numbers and a session of two participants: every POST has a target."""
    ks = await relay.service(UniqueName="world")
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER, UniqueName="order-1")
    status, numbers = await relay.api("GET", f"/v1/Services/{ks}/PhoneNumbers")
    assert status == 200
    return {
        "ks": ks,
        "kc": sess["sid"],
        "kp": sess["participants"][CUSTOMER],
        "pn": numbers["phone_numbers"][0]["sid"],
    }


def _posts(w: dict[str, str]) -> list[str]:
    ks, kc, kp, pn = w["ks"], w["kc"], w["kp"], w["pn"]
    return [
        "/v1/Services",
        f"/v1/Services/{ks}",
        f"/v1/Services/{ks}/PhoneNumbers",
        f"/v1/Services/{ks}/PhoneNumbers/{pn}",
        f"/v1/Services/{ks}/Sessions",
        f"/v1/Services/{ks}/Sessions/{kc}",
        f"/v1/Services/{ks}/Sessions/{kc}/Participants",
        f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions",
        f"/v1/Services/{ks}/Blocked",
    ]


def _invalid(body: Any, *names: str) -> None:
    """A Twilio-shaped 400 (20422, Invalid Parameter) whose message names each of `names`."""
    assert isinstance(body, dict), body
    assert body["status"] == 400 and body["code"] == 20422, body
    assert body["more_info"] == "https://www.twilio.com/docs/errors/20422"
    for name in names:
        assert name in body["message"], body


async def _all_refused(relay: Relay, cases: list[tuple[str, bytes, str]]) -> None:
    """Each (path, form body, parameter) POST is a 400 whose message names the parameter."""
    for path, body, name in cases:
        status, answer = await _raw(relay, "POST", path, body, FORM)
        assert status == 400, (path, body, answer)
        _invalid(answer, name)


def _urls(value: Any) -> Iterator[str]:
    """Every URL-valued field of a response (url, *_url, links)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and (k == "url" or k.endswith("_url")) and "://" in v:
                yield v
            else:
                yield from _urls(v)
    elif isinstance(value, list):
        for v in value:
            yield from _urls(v)


# ------------------------------------------------------------------------------------- webhooks


@pytest.mark.parametrize(("case", "content_type", "body"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
async def test_an_unreadable_webhook_body_is_a_400_and_nothing_is_done(
    relay: Relay, app_log: pytest.LogCaptureFixture, case: str, content_type: str, body: bytes
) -> None:
    await _world(relay)
    before = await _snapshot(relay)
    path = "/twilio/sms?bodySHA256=00" if content_type.startswith("application/json") else "/twilio/sms"
    status, text = await _raw(
        relay, "POST", path, body, content_type, headers={"X-Twilio-Signature": "any"}, auth=False
    )
    assert status == 400, (case, status, text)
    assert text.startswith("Bad Request: ") and len(text) < 300, text
    assert await _snapshot(relay) == before
    assert relay.fake.messages == []
    _quiet(app_log)


async def test_an_unsigned_body_is_403_unread_and_a_signed_json_one_that_is_not_json_400(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    assert (await _raw(relay, "POST", "/twilio/sms", b"From=%ff", FORM, auth=False))[0] == 403
    body = b"{not json"
    path = f"/twilio/sms?bodySHA256={hashlib.sha256(body).hexdigest()}"
    signature = RequestValidator(relay.settings.twilio_auth_token).compute_signature(relay.url + path, {})
    status, text = await _raw(
        relay, "POST", path, body, "application/json", headers={"X-Twilio-Signature": signature}, auth=False
    )
    assert status == 400 and "JSON" in text
    _quiet(app_log, at_most=2)


# ---------------------------------------------------------------------------- REST API bodies


@pytest.mark.parametrize(("case", "content_type", "body"), BODY_CASES, ids=[c[0] for c in BODY_CASES])
async def test_every_api_post_answers_an_unreadable_body_with_a_400(
    relay: Relay, app_log: pytest.LogCaptureFixture, case: str, content_type: str, body: bytes
) -> None:
    posts = _posts(await _world(relay))
    before = await _snapshot(relay)
    for path in posts:
        status, answer = await _raw(relay, "POST", path, body, content_type)
        assert status == 400, (case, path, status, answer)
        _invalid(answer)
    assert await _snapshot(relay) == before
    _quiet(app_log, at_most=0)


async def test_invalid_utf8_is_refused_naming_the_parameter_and_never_stored_mangled(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    w = await _world(relay)
    ks, kc, kp = w["ks"], w["kc"], w["kp"]
    before = await _snapshot(relay)
    cases = [
        ("/v1/Services", _form(UniqueName="caf%E9"), "UniqueName"),  # latin-1 é sent as UTF-8
        (f"/v1/Services/{ks}", _form(OutOfSessionMessage="%C3%28"), "OutOfSessionMessage"),
        (f"/v1/Services/{ks}", _form(UniqueName="ok", CallbackUrl="https://x.example/%ff"), "CallbackUrl"),
        (f"/v1/Services/{ks}/Sessions", _form(UniqueName="%ED%A0%80"), "UniqueName"),  # a surrogate
        (
            f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions",
            _form(Body="hi%ff"),
            "Body",
        ),
    ]
    await _all_refused(relay, cases)
    # A multipart text part is decoded as strictly, and named too.
    multipart = b'--b\r\nContent-Disposition: form-data; name="UniqueName"\r\n\r\n\xff\xfe\r\n--b--\r\n'
    status, answer = await _raw(relay, "POST", "/v1/Services", multipart, "multipart/form-data; boundary=b")
    assert status == 400
    _invalid(answer, "UniqueName")
    assert await _snapshot(relay) == before
    assert "\ufffd" not in str(before)
    _quiet(app_log, at_most=0)


async def test_nul_control_characters_and_lengths_are_refused_naming_the_parameter(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    w = await _world(relay)
    ks, kc, kp = w["ks"], w["kc"], w["kp"]
    before = await _snapshot(relay)
    too_long = orjson.dumps({"Identifier": "+14155550111", "FriendlyName": "x" * 256})
    cases = [
        ("/v1/Services", b"UniqueName=nul%00x", "UniqueName"),
        ("/v1/Services", b"UniqueName=ok&OutOfSessionMessage=%0B+%19%00.", "OutOfSessionMessage"),
        ("/v1/Services", b"UniqueName=two%0Alines", "UniqueName"),
        (f"/v1/Services/{ks}", b"HelpMessage=bell%07", "HelpMessage"),
        (f"/v1/Services/{ks}", b"Whisper=x%00", "Whisper"),
        (f"/v1/Services/{ks}/Sessions", b"UniqueName=a%00b", "UniqueName"),
        (
            f"/v1/Services/{ks}/Sessions",
            b"Participants=" + b'{"Identifier": "+14155550111", "FriendlyName": "a\\u0000b"}',
            "FriendlyName",
        ),
        (f"/v1/Services/{ks}/Sessions/{kc}/Participants", b"Identifier=%2B1415%00", "Identifier"),
        (f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions", b"Body=x%00", "Body"),
        (
            f"/v1/Services/{ks}/PhoneNumbers",
            b"PhoneNumber=%2B14155550299&FriendlyName=%1B[31m",
            "FriendlyName",
        ),
        ("/v1/Services", _form(UniqueName="x" * 192), "UniqueName"),
        (f"/v1/Services/{ks}", _form(OutOfSessionMessage="x" * 1601), "OutOfSessionMessage"),
        (f"/v1/Services/{ks}/Sessions", _form(UniqueName="x" * 192), "UniqueName"),
        (f"/v1/Services/{ks}/Sessions", b"Participants=" + too_long, "FriendlyName"),
    ]
    await _all_refused(relay, cases)
    # JSON bodies too: "\u0000" is valid JSON, never valid in a stored name.
    status, answer = await _raw(
        relay, "POST", "/v1/Services", b'{"UniqueName": "a\\u0000b"}', "application/json"
    )
    assert status == 400
    _invalid(answer, "UniqueName")
    assert await _snapshot(relay) == before
    _quiet(app_log, at_most=0)


async def test_free_text_keeps_its_line_breaks(relay: Relay) -> None:
    body = b"UniqueName=texts&OutOfSessionMessage=line+one%0D%0Aline%09two"
    status, body = await _raw(relay, "POST", "/v1/Services", body, FORM)
    assert status == 201, body
    assert body["options"]["out_of_session_message"] == "line one\r\nline\ttwo"


async def test_a_valid_multipart_or_latin1_form_is_read_as_sent(relay: Relay) -> None:
    multipart = (
        b'--b\r\nContent-Disposition: form-data; name="UniqueName"\r\n\r\ncaf\xc3\xa9\r\n'
        b'--b\r\nContent-Disposition: form-data; name="DefaultTtl"\r\n\r\n60\r\n--b--\r\n'
    )
    status, body = await _raw(relay, "POST", "/v1/Services", multipart, "multipart/form-data; boundary=b")
    assert status == 201, body
    assert body["unique_name"] == "café" and body["default_ttl"] == 60
    latin1 = FORM + "; charset=iso-8859-1"
    status, body = await _raw(relay, "POST", "/v1/Services", b"UniqueName=th%E9", latin1)
    assert status == 201, body
    assert body["unique_name"] == "thé"


# ----------------------------------------------------------------------------------- queries


async def _audit_auth(relay: Relay) -> dict[str, str]:
    sid, secret = await create_key(relay.pg, "auditor", permissions=frozenset({"proxy", "audit"}))
    return {"Authorization": "Basic " + base64.b64encode(f"{sid}:{secret}".encode()).decode()}


async def test_a_date_time_out_of_range_is_a_400_naming_it(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    auth = await _audit_auth(relay)
    for query, name in [
        ("Since=9999-12-31T23:59:59-12:00", "Since"),
        ("Until=0001-01-01T00:00:00%2B01:00", "Until"),
        ("Since=1969-12-31T23:59:59Z", "Since"),
        ("Since=%ff", "Since"),
    ]:
        status, body = await _raw(relay, "GET", f"/v1/Audit/Events?{query}", headers=auth)
        assert status == 400, (query, body)
        _invalid(body, name)
    w = await _world(relay)
    late = b"DateExpiry=9999-12-31T23:59:59-12:00"
    await _all_refused(relay, [(f"/v1/Services/{w['ks']}/Sessions/{w['kc']}", late, "DateExpiry")])
    _quiet(app_log, at_most=0)


async def test_a_query_string_with_invalid_utf8_or_controls_is_a_400(relay: Relay) -> None:
    auth = await _audit_auth(relay)
    for path, name in [
        ("/v1/Services?PageSize=%ff", "PageSize"),
        ("/v1/Audit/Events?Type=%C3%28", "Type"),
        ("/v1/Audit/Events?Session=KC" + "0" * 32 + "%0A", "Session"),
    ]:
        status, body = await _raw(relay, "GET", path, headers=auth)
        assert status == 400, (path, body)
        _invalid(body, name)


# -------------------------------------------------------------------------------------- URLs


@pytest.mark.parametrize("segment", ["a%20b", "%C3%A9t%C3%A9", "a%2Fb", "x%3Fy%23z", "%25"])
async def test_every_url_in_a_response_is_a_valid_uri(relay: Relay, segment: str) -> None:
    w = await _world(relay)
    ks, kc = w["ks"], w["kc"]
    status, body = await relay.api("GET", f"/v1/Services/{segment}")
    assert status == 404 and body["code"] == 20404, body
    answers = [body]
    for path in [
        f"/v1/Services/{segment}/Sessions",
        f"/v1/Services/{segment}/PhoneNumbers",
        f"/v1/Services/{ks}/Sessions/{segment}",
        f"/v1/Services/{ks}/Sessions/{segment}/Participants",
        f"/v1/Services/{ks}/Sessions/{segment}/Interactions",
        f"/v1/Services/{ks}/Sessions/{kc}/Participants/{segment}/MessageInteractions",
        "/v1/Services?PageSize=1",
        f"/v1/Services/{ks}/Sessions",
        f"/v1/Services/{ks}/Sessions/{kc}/Participants",
        f"/v1/Services/{ks}/PhoneNumbers?PageSize=1",
    ]:
        status, body = await relay.api("GET", path)
        assert status < 500, (path, body)
        answers.append(body)
    urls = [u for a in answers for u in _urls(a)]
    assert urls, "no URL to check"
    for url in urls:
        assert _URI.fullmatch(url), url


async def test_a_path_segment_with_a_control_character_is_a_404_not_a_500(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    w = await _world(relay)
    for path in [
        "/v1/Services/%00",
        f"/v1/Services/{w['ks']}/PhoneNumbers/PN%00",
        f"/v1/Services/{w['ks']}/Sessions/KC%00/Interactions",
        "/v1/Services/%ff",
    ]:
        for method in ("GET", "POST", "DELETE"):
            status, body = await _raw(relay, method, path, b"", FORM)
            assert status in (404, 405), (method, path, body)
            assert isinstance(body, dict) and body["status"] == status
    _quiet(app_log, at_most=0)


async def test_a_malformed_http_request_is_a_400_logged_in_one_line(
    relay: Relay, app_log: pytest.LogCaptureFixture
) -> None:
    """aiohttp refuses these before any handler (and used to log each with a traceback)."""
    for raw in (
        b"GET /v1/Services?Since=" + b"9" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v1/Services HTTP/1.1\r\nHost: x\r\nX-Probe: \x00\r\n\r\n",
    ):
        reader, writer = await asyncio.open_connection(relay.settings.host, relay.settings.port)
        writer.write(raw)
        assert b" 400 " in await reader.readline(), raw[:40]
        writer.close()
    _quiet(app_log, at_most=2)
