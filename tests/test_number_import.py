"""Number onboarding: `maskline numbers import` from the Twilio account (the fake's
IncomingPhoneNumbers), `phone_numbers.create(sid="PN...")` as on Twilio, `numbers list`, `keys list`."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from api_helpers import running_app
from cli_helpers import maskline
from fake_twilio import FakeTwilio
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client

from core import keys
from core.settings import Settings
from relay.credentials import create_key, revoke_key
from sessions.services import ServiceStore

UNKNOWN_PN = "PN" + "0" * 32


@pytest.fixture
async def service(settings: Settings, pg: asyncpg.Pool, redis: aioredis.Redis) -> dict[str, Any]:
    store = ServiceStore(pg, redis, account_sid=settings.twilio_account_sid)
    return await store.create({"unique_name": "deliveries"})


@pytest.fixture
def cli(settings: Settings, database_url: str, redis_url: str):  # type: ignore[no-untyped-def]
    env = {
        "MASKLINE_TWILIO_API_URL": settings.twilio_api_url,
        "MASKLINE_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "MASKLINE_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "MASKLINE_PUBLIC_URL": settings.public_url,
        "MASKLINE_EMBEDDED": "never",
    }

    async def run(*args: str):  # type: ignore[no-untyped-def]
        return await maskline(*args, database_url=database_url, redis_url=redis_url, env=env)

    return run


async def _pool(pg: asyncpg.Pool, service_sid: str) -> dict[str, dict[str, Any]]:
    rows = await pg.fetch("SELECT * FROM phone_numbers WHERE service_sid = $1", service_sid)
    return {r["phone_number"]: {**dict(r), "capabilities": orjson.loads(r["capabilities"])} for r in rows}


async def test_import_of_250_numbers_configures_every_webhook_and_a_second_run_changes_nothing(
    settings: Settings, fake_twilio: FakeTwilio, pg: asyncpg.Pool, redis: aioredis.Redis, service, cli
) -> None:
    seeded = fake_twilio.numbers.seed(200) + fake_twilio.numbers.seed(50, prefix="+1650555", mms=False)
    first = await cli("numbers", "import", "--service", "deliveries", "--all")
    print(f"\n$ maskline numbers import --service deliveries --all\n{first.stdout}")
    assert first.returncode == 0, first.stderr
    assert "added 250, configured 250, unchanged 0, skipped 0, failed 0" in first.stdout
    assert "250 number(s) of the Twilio account selected (3 page(s) listed)" in first.stdout
    assert "importing" not in first.stderr and "━" not in first.stderr, "no bar when stderr is no terminal"

    # Three pages of 100, each next_page_uri followed; one update per number, Maskline's URLs.
    lists = fake_twilio.number_list_requests
    assert [(r.query.get("PageSize"), r.query.get("Page", "0")) for r in lists] == [
        ("100", "0"),
        ("100", "1"),
        ("100", "2"),
    ]
    updates = fake_twilio.number_updates
    assert len(updates) == 250
    assert {
        (u["SmsUrl"], u["SmsMethod"], u["VoiceUrl"], u["VoiceMethod"], u["StatusCallback"]) for u in updates
    } == {(f"{settings.public_url}/twilio/sms", "POST", f"{settings.public_url}/twilio/voice", "POST", "")}
    updated_sids = {
        r.path.rsplit("/", 1)[-1].removesuffix(".json") for r in fake_twilio.requests if r.method == "POST"
    }
    assert updated_sids == {n["sid"] for n in seeded}

    # In the pool with Twilio's sids and capabilities, published to Redis.
    pool = await _pool(pg, service["sid"])
    assert {n: row["sid"] for n, row in pool.items()} == {n["phone_number"]: n["sid"] for n in seeded}
    assert pool["+14155550000"]["capabilities"]["mms_outbound"] is True
    assert pool["+16505550000"]["capabilities"]["mms_inbound"] is False
    assert pool["+16505550000"]["capabilities"]["sms"] is True
    assert pool["+14155550007"]["friendly_name"] == "(415) 555-0007"
    assert await redis.hget(keys.number(service["sid"], "+16505550049"), "sid") == seeded[-1]["sid"]

    fake_twilio.clear()
    second = await cli("numbers", "import", "--service", service["sid"], "--all")
    print(f"$ maskline numbers import --service {service['sid']} --all  # again\n{second.stdout}")
    assert second.returncode == 0, second.stderr
    assert "added 0, configured 0, unchanged 250, skipped 0, failed 0" in second.stdout
    assert len(fake_twilio.number_list_requests) == 3
    assert [r for r in fake_twilio.requests if r.method != "GET"] == []
    assert len(await _pool(pg, service["sid"])) == 250


async def test_dry_run_changes_nothing(fake_twilio: FakeTwilio, pg: asyncpg.Pool, service, cli) -> None:
    fake_twilio.numbers.seed(30)
    done = await cli("numbers", "import", "--service", "deliveries", "--all", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run, nothing changed: would add 30, would configure 30, unchanged 0, skipped 0" in done.stdout
    assert fake_twilio.number_updates == [] and [r.method for r in fake_twilio.requests] == ["GET"]
    assert await _pool(pg, service["sid"]) == {}


async def test_area_code_and_number_choose_what_is_imported(
    fake_twilio: FakeTwilio, pg: asyncpg.Pool, service, cli
) -> None:
    fake_twilio.numbers.seed(20)
    sf650 = fake_twilio.numbers.seed(10, prefix="+1650555")
    done = await cli("numbers", "import", "--service", "deliveries", "--area-code", "650")
    assert done.returncode == 0, done.stderr
    assert "added 10, configured 10" in done.stdout
    assert set(await _pool(pg, service["sid"])) == {n["phone_number"] for n in sf650}
    assert len(fake_twilio.number_updates) == 10

    # --number: Twilio's PhoneNumber filter, one listing per number; unknown ones are reported.
    fake_twilio.clear()
    done = await cli(
        "numbers",
        "import",
        "--service",
        "deliveries",
        "--no-configure",
        "--number",
        "+14155550003",
        "+14155559999",
    )
    assert done.returncode == 0, done.stderr
    assert "added 1, configured 0, unchanged 0, skipped 1, failed 0" in done.stdout
    assert "skipped +14155559999: not a number of the Twilio account" in done.stdout
    assert [r.query.get("PhoneNumber") for r in fake_twilio.number_list_requests] == [
        "+14155550003",
        "+14155559999",
    ]
    assert fake_twilio.number_updates == []
    assert len(await _pool(pg, service["sid"])) == 11


async def test_configured_numbers_are_left_alone_and_other_services_numbers_skipped(
    settings: Settings, fake_twilio: FakeTwilio, pg: asyncpg.Pool, redis: aioredis.Redis, service, cli
) -> None:
    done_right = fake_twilio.numbers.add(
        "+14155550100",
        sms_url=f"{settings.public_url}/twilio/sms",
        voice_url=f"{settings.public_url}/twilio/voice",
    )
    with_app = fake_twilio.numbers.add("+14155550101", voice_application_sid="AP" + "1" * 32)
    elsewhere = fake_twilio.numbers.add("+14155550102")
    other = await ServiceStore(pg, redis, account_sid=settings.twilio_account_sid).create(
        {"unique_name": "rides"}
    )
    await pg.execute(
        "INSERT INTO phone_numbers (sid, service_sid, phone_number, iso_country) VALUES ($1, $2, $3, 'US')",
        elsewhere["sid"],
        other["sid"],
        elsewhere["phone_number"],
    )
    done = await cli("numbers", "import", "--service", "deliveries", "--all")
    assert done.returncode == 0, done.stderr
    assert "added 2, configured 1, unchanged 0, skipped 1, failed 0" in done.stdout
    assert (
        f"skipped +14155550102 {elsewhere['sid']}: already in Service rides ({other['sid']})" in done.stdout
    )
    # Only the number with a voice application was updated, and its application cleared.
    assert [u.get("VoiceApplicationSid") for u in fake_twilio.number_updates] == [""]
    assert fake_twilio.numbers.get(with_app["sid"])["voice_application_sid"] == ""  # type: ignore[index]
    assert set(await _pool(pg, service["sid"])) == {done_right["phone_number"], with_app["phone_number"]}


async def test_phone_numbers_create_by_sid_as_on_twilio(
    settings: Settings, fake_twilio: FakeTwilio, pg: asyncpg.Pool, redis: aioredis.Redis, cli
) -> None:
    voice_only = fake_twilio.numbers.add("+14155550142", sms=False, mms=False)
    async with running_app(settings, redis, pg) as api:
        client = Client(api.key_sid, api.key_secret, account_sid=settings.twilio_account_sid)
        client.proxy.base_url = api.base

        def scenario() -> dict[str, Any]:
            service = client.proxy.v1.services.create(unique_name="deliveries")
            numbers = client.proxy.v1.services(service.sid).phone_numbers
            created = numbers.create(sid=voice_only["sid"])
            fetched = numbers(voice_only["sid"]).fetch()
            by_e164 = numbers.create(phone_number="+14155550143")  # no account look-up
            errors = {}
            for name, kwargs in {
                "unknown": {"sid": UNKNOWN_PN},
                "twice": {"sid": voice_only["sid"]},
                "mismatch": {"sid": voice_only["sid"], "phone_number": "+14155550199"},
            }.items():
                try:
                    numbers.create(**kwargs)
                except TwilioRestException as err:
                    errors[name] = (err.status, err.code)
            client.proxy.v1.services(service.sid).sessions.create(
                participants=[{"Identifier": "+14155550101"}, {"Identifier": "+14155550102"}]
            )
            in_use = {n.phone_number: n.in_use for n in numbers.list()}
            return {
                "service": service,
                "created": created,
                "fetched": fetched,
                "by_e164": by_e164,
                "errors": errors,
                "in_use": in_use,
            }

        got = await asyncio.to_thread(scenario)
        created, fetched = got["created"], got["fetched"]
        assert created.sid == fetched.sid == voice_only["sid"]
        assert created.phone_number == "+14155550142" and created.friendly_name == "(415) 555-0142"
        assert created.capabilities["voice_inbound"] is True and created.capabilities["sms_outbound"] is False
        assert created.capabilities["voice"] is True and created.capabilities["sms"] is False
        assert got["by_e164"].sid != voice_only["sid"] and got["by_e164"].capabilities["sms_inbound"] is True
        assert got["errors"] == {"unknown": (404, 80301), "twice": (400, 80601), "mismatch": (400, 20422)}
        assert (
            f"GET /2010-04-01/Accounts/{settings.twilio_account_sid}/IncomingPhoneNumbers/{UNKNOWN_PN}.json > 404"
            in fake_twilio.log
        )

        # Twilio unreachable: a clear 503, nothing added.
        fake_twilio.numbers.add("+14155550144")
        fake_twilio.fail_next(4, 503)

        def outage() -> tuple[int, int, str]:
            try:
                client.proxy.v1.services(got["service"].sid).phone_numbers.create(
                    sid=fake_twilio.numbers.by_number("+14155550144")["sid"]  # type: ignore[index]
                )
            except TwilioRestException as err:
                return err.status, err.code, err.msg
            raise AssertionError("created during a Twilio outage")

        status, code, message = await asyncio.to_thread(outage)
        assert (status, code) == (503, 20503) and "Twilio" in message
        assert "+14155550144" not in await _pool(pg, got["service"].sid)

    # `maskline numbers list` and `maskline keys list` show what is there.
    scoped, _ = await create_key(pg, "dispatch", service_sids=[got["service"].sid])
    gone, _ = await create_key(pg, "old", permissions=frozenset({"proxy", "audit"}))
    await revoke_key(pg, gone)
    listed = await cli("numbers", "list", "--service", "deliveries")
    print(f"$ maskline numbers list --service deliveries\n{listed.stdout}")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["SERVICE", "NUMBER", "SID", "CAPABILITIES", "RESERVED", "IN", "USE"]
    in_use = got["in_use"]
    assert sum(in_use.values()) >= 1
    assert rows[0].split() == [
        "deliveries",
        "+14155550142",
        voice_only["sid"],
        "voice",
        "no",
        str(in_use["+14155550142"]),
    ]
    assert rows[1].split()[:2] == ["deliveries", "+14155550143"]
    assert rows[1].split()[3:] == ["voice,sms", "no", str(in_use["+14155550143"])]
    assert rows[-1] == "2 number(s)"

    keys_out = await cli("keys", "list")
    print(f"$ maskline keys list\n{keys_out.stdout}")
    assert keys_out.returncode == 0, keys_out.stderr
    by_sid = {line.split()[1]: line.split() for line in keys_out.stdout.splitlines()[1:-1]}
    assert by_sid[scoped][0] == "dispatch" and by_sid[scoped][2:4] == [got["service"].sid, "proxy"]
    assert by_sid[scoped][5] == "-"
    assert by_sid[gone][2:4] == ["all", "audit,proxy"]
    assert by_sid[gone][5] != "-"
    assert "secret" not in keys_out.stdout.lower() and "scrypt" not in keys_out.stdout
