"""Schemathesis against the running app, both specs: Twilio's Proxy v1 document (the contract) and
Maskline's own (relay/openapi.json: the contract plus the audit API and webhooks). Any 5xx
fails (`not_a_server_error`), and so does a request that gets no answer: bad input must get a 4xx
that names what to fix.

Schemathesis' own engine (what `st run` drives: examples, coverage, fuzzing and stateful phases,
derandomized from a fixed seed) runs in a worker thread while the app serves on a real port in the
test's event loop, against the test Redis and Postgres. A world is seeded first - a Service with
numbers, a session with participants, a message interaction - and the fuzzer draws path
parameters from its Sids (schemathesis dictionaries), so operations reach real resources and not
only 404s; deleting operations draw from decoys, so the world lasts (the stateful phase may
still find it and delete it late in a long campaign).

Budget: MASKLINE_FUZZ_EXAMPLES (default 20) examples per operation and phase keep the module
under 20 s here (CI budget: 90 s). A long campaign is the same test with a larger budget, e.g.
    MASKLINE_FUZZ_EXAMPLES=1500 MASKLINE_FUZZ_SEED=7 .venv/bin/python -m pytest -s tests/test_fuzz.py
(each test prints how many requests it made, by status)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
import schemathesis
from aiohttp import web
from schemathesis.engine import events, from_schema

from core.settings import Settings
from maskline.server import create_app
from relay.credentials import create_key

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = int(os.environ.get("MASKLINE_FUZZ_EXAMPLES", "20"))
SEED = int(os.environ.get("MASKLINE_FUZZ_SEED", "20261123"))
CUSTOMER, COURIER, DRIVER = "+14155550101", "+14155550102", "+14155550103"
POOL = ("+14155550201", "+14155550202", "+14155550203")
DECOY_NUMBER = "+14155550301"
# Strings that broke the API before (NUL into Postgres, C0 controls, odd dates, path characters),
# offered for any string parameter now and then, beside what schemathesis generates itself.
NASTY = [
    "nul\x00x",
    "\x0b \x19\x00.",
    "two\nlines",
    "tab\there",
    "a b",
    "café",
    "\U0001d11e",
    "%ff%fe",
    "../..",
    "a/b?c#d",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01T00:00:00+01:00",
    "1969-12-31T23:59:59Z",
    "-1",
    "1e309",
    "99999999999999999999999",
    "true",
    "{}",
    "[]",
    '{"Identifier": "+14155550111", "FriendlyName": "a\\u0000b"}',
    "+14155550101",
    "x" * 5000,
]


@dataclass
class World:
    service: str
    decoy_service: str
    numbers: list[str]
    decoy_number: str
    session: str
    decoy_session: str
    participants: list[str]
    decoy_participant: str
    interaction: str


@dataclass
class Target:
    base: str
    key_sid: str
    key_secret: str
    world: World


@dataclass
class Campaign:
    """What one engine run did: requests by status, and what must fail the test."""

    requests: int = 0
    operations: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return f"{self.requests} requests, by status {dict(sorted(self.statuses.items()))}"


async def _seed(base: str, key_sid: str, key_secret: str) -> World:
    """Resources for the fuzzer to reach, through the API itself."""
    headers = {"Authorization": aiohttp.encode_basic_auth(key_sid, key_secret)}
    async with aiohttp.ClientSession(base_url=base, headers=headers) as http:

        async def post(path: str, form: list[tuple[str, str]]) -> dict[str, Any]:
            async with http.post(path, data=form) as resp:
                body: dict[str, Any] = orjson.loads(await resp.read())
                assert resp.status == 201, (path, body)
                return body

        async def session(ks: str, name: str, *identifiers: str) -> tuple[str, list[str]]:
            form = [("UniqueName", name)]
            form += [("Participants", orjson.dumps({"Identifier": i}).decode()) for i in identifiers]
            kc = (await post(f"/v1/Services/{ks}/Sessions", form))["sid"]
            async with http.get(f"/v1/Services/{ks}/Sessions/{kc}/Participants") as resp:
                parts = orjson.loads(await resp.read())["participants"]
            return kc, [p["sid"] for p in parts]

        ks = (await post("/v1/Services", [("UniqueName", "fuzz-world"), ("DefaultTtl", "86400")]))["sid"]
        decoy = (await post("/v1/Services", [("UniqueName", "fuzz-decoy")]))["sid"]
        numbers = [(await post(f"/v1/Services/{ks}/PhoneNumbers", [("PhoneNumber", n)]))["sid"] for n in POOL]
        decoy_number = (await post(f"/v1/Services/{decoy}/PhoneNumbers", [("PhoneNumber", DECOY_NUMBER)]))[
            "sid"
        ]
        kc, participants = await session(ks, "fuzz-session", CUSTOMER, COURIER)
        decoy_kc, decoy_parts = await session(ks, "fuzz-decoy-session", DRIVER)
        ki = (
            await post(
                f"/v1/Services/{ks}/Sessions/{kc}/Participants/{participants[0]}/MessageInteractions",
                [("Body", "your order is on its way")],
            )
        )["sid"]
    return World(ks, decoy, numbers, decoy_number, kc, decoy_kc, participants, decoy_parts[0], ki)


# ------------------------------------------------------------------------------------ the config


def fuzz_config(target: Target, *, examples: int = EXAMPLES, seed: int = SEED) -> dict[str, Any]:
    """Schemathesis' configuration (the schemathesis.toml keys): the app, its key, the budget, and
    the seeded world's Sids and numbers as dictionaries the fuzzer draws from."""
    w = target.world
    sids = [w.service, *w.numbers, w.session, *w.participants, w.interaction]

    def draw(dictionary: str, probability: float = 0.7) -> dict[str, Any]:
        return {"dictionary": dictionary, "probability": probability}

    def only(method: str, path: str, **parameters: dict[str, Any]) -> dict[str, Any]:
        return {"include-method": method, "include-path": path, "parameters": parameters}

    return {
        "seed": seed,
        "suppress-health-check": ["all"],
        "cache": {"enabled": False},  # no .schemathesis/ state in the checkout
        "base-url": target.base,
        "auth": {"basic": {"username": target.key_sid, "password": target.key_secret}},
        "generation": {
            "max-examples": examples,
            "deterministic": True,
            "database": "none",
            "mode": "all",
            "dictionaries": {"string": draw("nasty", 0.05)},
        },
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True}},
        "dictionaries": {
            "services": {"values": [w.service]},
            "sessions": {"values": [w.session]},
            "participants": {"values": w.participants},
            "sids": {"values": sids},
            "phones": {"values": [CUSTOMER, COURIER, DRIVER, *POOL, "+442071838750"]},
            "decoy_services": {"values": [w.decoy_service]},
            "decoy_numbers": {"values": [w.decoy_number]},
            "decoy_sessions": {"values": [w.decoy_session]},
            "decoy_participants": {"values": [w.decoy_participant]},
            "nasty": {"values": NASTY},
        },
        "parameters": {
            "path.ServiceSid": draw("services", 0.8),
            "path.SessionSid": draw("sessions", 0.8),
            "path.ParticipantSid": draw("participants", 0.8),
            "path.Sid": draw("sids", 0.6),
            "body.Identifier": draw("phones", 0.5),
            "body.PhoneNumber": draw("phones", 0.5),
            "body.ProxyIdentifier": draw("phones", 0.3),
            "query.Session": draw("sessions", 0.3),
            "query.Service": draw("services", 0.3),
            "query.Number": draw("phones", 0.3),
        },
        "operations": [
            # What deletes draws from decoys: the world has to outlive the run.
            only("DELETE", "/v1/Services/{Sid}", **{"path.Sid": draw("decoy_services", 0.5)}),
            only(
                "DELETE",
                "/v1/Services/{ServiceSid}/PhoneNumbers/{Sid}",
                **{"path.ServiceSid": draw("decoy_services", 0.5), "path.Sid": draw("decoy_numbers", 0.5)},
            ),
            only(
                "DELETE",
                "/v1/Services/{ServiceSid}/Sessions/{Sid}",
                **{"path.Sid": draw("decoy_sessions", 0.5)},
            ),
            only(
                "DELETE",
                "/v1/Services/{ServiceSid}/Sessions/{SessionSid}/Participants/{Sid}",
                **{
                    "path.SessionSid": draw("decoy_sessions", 0.5),
                    "path.Sid": draw("decoy_participants", 0.5),
                },
            ),
        ],
    }


def load_schema(spec: Path, target: Target, **budget: int) -> Any:
    config = schemathesis.Config.from_dict(fuzz_config(target, **budget))
    return schemathesis.openapi.from_path(spec, config=config)


def run_campaign(schema: Any) -> Campaign:
    """Every phase of schemathesis' engine over the schema (blocking: run it in a thread)."""
    campaign = Campaign()
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            campaign.operations.add(recorder.label)
            for interaction in recorder.interactions.values():
                campaign.requests += 1
                response = interaction.response
                if response is None:
                    campaign.errors.append(f"{recorder.label}: no response to {interaction.request.uri}")
                    continue
                campaign.statuses[response.status_code] += 1
                if response.status_code >= 500:
                    request = interaction.request
                    content_type = request.headers.get("Content-Type") or request.headers.get("content-type")
                    campaign.server_errors.append(
                        f"{recorder.label} -> {response.status_code}: {request.method} {request.uri} "
                        f"Content-Type {content_type} {(request.body or b'')[:200]!r} {response.content[:200]!r}"
                    )
            for checks in recorder.checks.values():
                for check in checks:
                    if check.status == "failure" and check.failure_info is not None:
                        campaign.server_errors.append(f"{recorder.label}: {check.failure_info.failure.title}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            campaign.errors.append(
                f"{type(event).__name__}: {getattr(event, 'label', '')} {event.info if isinstance(event, events.NonFatalError) else event.exception}"
            )
    return campaign


# ------------------------------------------------------------------------------------- the tests


@pytest.fixture
async def target(
    settings: Settings, redis: aioredis.Redis, pg: asyncpg.Pool, fake_twilio: Any
) -> AsyncIterator[Target]:
    """The app on the test port (real Redis, Postgres and the fake Twilio), with a seeded world."""
    if "auth_failure_limit" in {f.name for f in dataclasses.fields(Settings)}:
        # Requests that schemathesis sends without credentials must not lock the key out.
        settings = dataclasses.replace(settings, auth_failure_limit=0)  # type: ignore[call-arg]
    runner = web.AppRunner(create_app(settings, redis=redis, pg=pg, background=False))
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        sid, secret = await create_key(pg, "fuzz", permissions=frozenset({"proxy", "audit"}))
        yield Target(settings.public_url, sid, secret, await _seed(settings.public_url, sid, secret))
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("spec", ["docs/openapi/twilio_proxy_v1.json", "relay/openapi.json"])
async def test_no_operation_of_the_spec_gets_a_5xx(
    target: Target, spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    schema = load_schema(ROOT / spec, target)
    with caplog.at_level(logging.WARNING):
        campaign = await asyncio.to_thread(run_campaign, schema)
    print(f"\n{spec} (seed {SEED}, {EXAMPLES} examples per operation): {campaign.summary()}")
    assert not campaign.server_errors, "\n".join(campaign.server_errors[:20])
    assert not campaign.errors, "\n".join(campaign.errors[:20])
    # Bad input is refused in at most one line of the app's log, never with a traceback.
    app_records = [r for r in caplog.records if r.name.startswith(("maskline", "aiohttp"))]
    loud = [r for r in app_records if r.exc_info or r.levelno >= logging.ERROR]
    assert not loud, [r.getMessage() for r in loud[:10]]
    # The harness itself: every operation ran, and the seeded world was reached (not only 404s).
    operations = {op.ok().label for op in schema.get_all_operations()}
    assert operations <= campaign.operations, operations - campaign.operations
    reached = sum(n for status, n in campaign.statuses.items() if status < 300)
    assert reached >= campaign.requests // 20, campaign.summary()
