"""A fake Twilio (and callback receiver): an aiohttp server on 127.0.0.1 with a request log.

    fake = FakeTwilio(account_sid, auth_token); await fake.start()
    ... code under test posts to f"{fake.url}/2010-04-01/Accounts/{AC}/Messages.json" ...
    assert fake.log == ['POST /2010-04-01/Accounts/AC.../Messages.json > 201']

`fake.fail_next(2, 429)` makes the next two requests answer 429 (Twilio's error JSON);
`fake.route("POST", "/intercept", handler)` serves a callback endpoint (default: log, answer 200).
`fake.numbers` is the account's IncomingPhoneNumbers (tests/fake_numbers.py): `fake.numbers.seed(250)`,
then list pages, fetch by sid and POST updates are served like Twilio's; `fake.number_updates` has
the form of every accepted update.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer
from fake_numbers import NUMBER_PATH, NUMBERS_LIST_PATH, IncomingNumbers

__all__ = ["FakeTwilio", "FakeRequest", "Handler", "MESSAGES_PATH"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MESSAGES_PATH = re.compile(r"^/2010-04-01/Accounts/(AC[0-9a-fA-F]{32})/Messages\.json$")

_ERRORS = {  # status -> (Twilio error code, message) as the real API answers them
    400: (21604, "A 'To' phone number is required."),
    401: (20003, "Authenticate"),
    404: (20404, "The requested resource was not found"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    503: (20503, "Service Unavailable"),
}


@dataclass(frozen=True)
class FakeRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    form: dict[str, str]  # a repeated field keeps its last value; form_all has every value
    form_all: dict[str, list[str]]
    body: bytes
    status: int  # what the fake answered

    @property
    def json(self) -> Any:
        import json

        return json.loads(self.body)


@dataclass
class _Failure:
    remaining: int
    status: int
    path: str | None


@dataclass
class FakeTwilio:
    account_sid: str = "AC" + "0" * 32
    auth_token: str | None = None  # None: accept any Basic credentials for the Messages API
    log: list[str] = field(default_factory=list)
    requests: list[FakeRequest] = field(default_factory=list)
    _routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _server: TestServer | None = None
    numbers: IncomingNumbers = field(init=False)

    def __post_init__(self) -> None:
        self.numbers = IncomingNumbers(self.account_sid)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> FakeTwilio:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._server = TestServer(app, host="127.0.0.1")
        await self._server.start_server()
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.close()
            self._server = None

    async def __aenter__(self) -> FakeTwilio:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeTwilio is not started"
        return f"http://127.0.0.1:{self._server.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    @property
    def auth_headers(self) -> dict[str, str]:
        """The HTTP Basic header a Twilio client sends (AccountSid:AuthToken)."""
        pair = f"{self.account_sid}:{self.auth_token or ''}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}

    @property
    def messages_url(self) -> str:
        return f"{self.url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    # -------------------------------------------------------------- knobs

    def fail_next(self, count: int, status: int = 500, *, path: str | None = None) -> None:
        """The next `count` requests (to `path` only, if given) answer `status` with Twilio's error JSON."""
        self._failures.append(_Failure(count, status, path))

    def route(self, method: str, path: str, handler: Handler | None = None) -> str:
        """Serve method+path (e.g. a callback URL); returns its full URL. Default handler: 200, empty."""
        self._routes[(method.upper(), path)] = handler or _ok
        return self.url_for(path)

    @property
    def messages(self) -> list[dict[str, str]]:
        """Form data of every Messages.json POST that was accepted (201)."""
        return [r.form for r in self.requests if MESSAGES_PATH.match(r.path) and r.status == 201]

    @property
    def number_updates(self) -> list[dict[str, str]]:
        """Form data of every accepted (200) POST to an IncomingPhoneNumber."""
        return [
            r.form
            for r in self.requests
            if r.method == "POST" and NUMBER_PATH.match(r.path) and r.status == 200
        ]

    @property
    def number_list_requests(self) -> list[FakeRequest]:
        """Every GET of the IncomingPhoneNumbers list (one per page)."""
        return [r for r in self.requests if r.method == "GET" and NUMBERS_LIST_PATH.match(r.path)]

    def clear(self) -> None:
        self.log.clear()
        self.requests.clear()

    # -------------------------------------------------------------- serving

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        form_all: dict[str, list[str]] = {}
        if request.content_type == "application/x-www-form-urlencoded":
            for key, value in (await request.post()).items():
                form_all.setdefault(key, []).append(str(value))
        response: web.StreamResponse | None = self._injected_failure(request.path)
        if response is None:
            handler = self._routes.get((request.method, request.path))
            if handler is not None:
                response = await handler(request)
            elif (
                numbers := self._serve_numbers(request, {k: v[-1] for k, v in form_all.items()})
            ) is not None:
                response = numbers
            elif request.method == "POST" and MESSAGES_PATH.match(request.path):
                response = self._create_message(request, {k: v[-1] for k, v in form_all.items()})
            else:
                response = _error(404)
        assert response is not None
        self.requests.append(
            FakeRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                form={k: v[-1] for k, v in form_all.items()},
                form_all=form_all,
                body=body,
                status=response.status,
            )
        )
        self.log.append(f"{request.method} {request.path} > {response.status}")
        return response

    def _injected_failure(self, path: str) -> web.Response | None:
        for failure in self._failures:
            if failure.remaining > 0 and failure.path in (None, path):
                failure.remaining -= 1
                return _error(failure.status)
        return None

    def _serve_numbers(self, request: web.Request, form: dict[str, str]) -> web.Response | None:
        """IncomingPhoneNumbers (list, fetch, update); None for any other path."""
        listing, one = NUMBERS_LIST_PATH.match(request.path), NUMBER_PATH.match(request.path)
        match = listing or one
        if match is None:
            return None
        if not self._authorised(request, match.group(1)):
            return _error(401)
        if match.group(1) != self.account_sid:
            return _error(404)
        if listing is not None and request.method == "GET":
            return self.numbers.list_page(request.path, dict(request.query))
        if one is not None and request.method == "GET":
            return self.numbers.fetch(request.path, one.group(2))
        if one is not None and request.method == "POST":
            return self.numbers.update(request.path, one.group(2), form)
        return _error(405, 20004, "Method not allowed")

    def _create_message(self, request: web.Request, form: dict[str, str]) -> web.Response:
        match = MESSAGES_PATH.match(request.path)
        assert match is not None
        account_sid = match.group(1)
        if not self._authorised(request, account_sid):
            return _error(401)
        if not form.get("To"):
            return _error(400)
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return _error(400, 21603, "A 'From' phone number is required.")
        if not (form.get("Body") or form.get("MediaUrl") or form.get("ContentSid")):
            return _error(400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(UTC), usegmt=True)  # Twilio dates are RFC 2822
        body = form.get("Body", "")
        uri = f"/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"
        resource = {
            "sid": sid,
            "account_sid": account_sid,
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "from": form.get("From"),
            "to": form["To"],
            "body": body,
            "status": "queued",
            "direction": "outbound-api",
            "num_segments": str(max(1, -(-len(body) // 153))),
            "num_media": "1" if form.get("MediaUrl") else "0",
            "price": None,
            "price_unit": "USD",
            "error_code": None,
            "error_message": None,
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "uri": uri,
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
        }
        return web.json_response(resource, status=201)

    def _authorised(self, request: web.Request, account_sid: str) -> bool:
        # Twilio authenticates with HTTP Basic AccountSid:AuthToken; a client that forgets it
        # would fail against the real API, so the fake refuses it too.
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == account_sid and (self.auth_token is None or password == self.auth_token)


async def _ok(request: web.Request) -> web.StreamResponse:
    return web.Response(status=200)


def _error(status: int, code: int | None = None, message: str | None = None) -> web.Response:
    default_code, default_message = _ERRORS.get(status, (20500, "Error"))
    code = code or default_code
    return web.json_response(
        {
            "code": code,
            "message": message or default_message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status=status,
    )
