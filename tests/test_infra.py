"""The ground the rest stands on: settings, migrations, embedded-server fallbacks, the fake Twilio."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from fake_twilio import FakeTwilio
from signing import post_webhook, sign
from twilio.request_validator import RequestValidator

from core.settings import Settings
from maskline.devservers import ServerUnreachable, ensure_database, ensure_servers, with_database
from maskline.migrate import apply_migrations, find_migrations

# --------------------------------------------------------------------------- settings


def test_settings_defaults_when_environment_is_empty() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.port == 8080
    assert not settings.redis_url_explicit and not settings.database_url_explicit


def test_settings_parse_types_and_record_explicit_urls() -> None:
    settings = Settings.from_env(
        {
            "MASKLINE_PORT": "9000",
            "MASKLINE_SWEEP_INTERVAL_S": "0.25",
            "MASKLINE_REDIS_URL": "redis://example:6379/2",
            "MASKLINE_PUBLIC_URL": "https://relay.example.com/",
            "MASKLINE_EMBEDDED": "never",
            "UNRELATED": "x",
        }
    )
    assert settings.port == 9000
    assert settings.sweep_interval_s == 0.25
    assert settings.redis_url == "redis://example:6379/2"
    assert settings.redis_url_explicit and not settings.database_url_explicit
    assert settings.public_url == "https://relay.example.com"  # no trailing slash: signed URLs
    assert settings.embedded == "never"


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MASKLINE_PORT", "eighty"),
        ("MASKLINE_PORT", "80.5"),
        ("MASKLINE_WEBHOOK_DEADLINE_S", "soon"),
        ("MASKLINE_CALLBACK_TIMEOUT_S", "-1"),
        ("MASKLINE_EMBEDDED", "sometimes"),
        ("MASKLINE_REDIS_URL", "  "),
    ],
)
def test_bad_setting_names_the_variable(var: str, value: str) -> None:
    with pytest.raises(ValueError, match=var):
        Settings.from_env({var: value})


def test_settings_are_frozen_and_replaceable() -> None:
    settings = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]
    moved = dataclasses.replace(settings, port=9999, public_url="http://x:1/")
    assert moved.port == 9999 and moved.public_url == "http://x:1" and settings.port == 8080


# --------------------------------------------------------------------------- migrations


@pytest.fixture
async def scratch_db(database_url: str) -> AsyncIterator[str]:
    """An empty database of its own, for tests that migrate from nothing."""
    name = f"maskline_test_scratch_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(with_database(database_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield with_database(database_url, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_session_database_has_every_migration(pg: asyncpg.Pool) -> None:
    versions = {row["version"] for row in await pg.fetch("SELECT version FROM schema_migrations")}
    assert versions == {version for version, _ in find_migrations()}
    assert await pg.fetchval("SELECT count(*) FROM services") == 0


async def test_migrations_apply_once(scratch_db: str) -> None:
    first = await apply_migrations(scratch_db)
    assert first == [version for version, _ in find_migrations()]
    assert first[0] == "0001_core"
    assert await apply_migrations(scratch_db) == []


async def test_concurrent_runs_apply_each_migration_once(scratch_db: str, tmp_path: Path) -> None:
    # Not idempotent on purpose (plain CREATE TABLE) and slow, so an unguarded second run would
    # both see it pending and fail.
    (tmp_path / "0001_slow.sql").write_text("SELECT pg_sleep(0.3); CREATE TABLE slow (id int);")
    (tmp_path / "0002_more.sql").write_text("CREATE TABLE more (id int);")
    (tmp_path / "notes.txt").write_text("not a migration")
    runs = await asyncio.gather(*(apply_migrations(scratch_db, directory=tmp_path) for _ in range(3)))
    assert sorted(runs, key=len) == [[], [], ["0001_slow", "0002_more"]]
    conn = await asyncpg.connect(scratch_db)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in rows] == ["0001_slow", "0002_more"]
    finally:
        await conn.close()


async def test_failing_migration_is_rolled_back_and_not_recorded(scratch_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(asyncpg.UndefinedFunctionError):
        await apply_migrations(scratch_db, directory=tmp_path)
    conn = await asyncpg.connect(scratch_db)
    try:
        assert await conn.fetchval("SELECT to_regclass('half')") is None
        assert [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")] == ["0001_ok"]
    finally:
        await conn.close()
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (id int);")
    assert await apply_migrations(scratch_db, directory=tmp_path) == ["0002_bad"]


async def test_pg_fixture_starts_each_test_with_empty_tables(pg: asyncpg.Pool) -> None:
    for _ in range(2):  # whichever order tests run in, a row left behind would show here
        assert await pg.fetchval("SELECT count(*) FROM services") == 0
    await pg.execute(
        "INSERT INTO services (sid, account_sid, unique_name) VALUES ('KS1', 'AC1', 'left-behind')"
    )


async def test_pg_fixture_truncates_what_the_previous_test_left(pg: asyncpg.Pool) -> None:
    assert await pg.fetchval("SELECT count(*) FROM services") == 0
    await pg.execute(
        "INSERT INTO services (sid, account_sid, unique_name) VALUES ('KS1', 'AC1', 'left-behind')"
    )


async def test_redis_fixture_flushes_only_the_test_db(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set("ml:left-behind", "1")


async def test_redis_fixture_starts_empty_again(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set("ml:left-behind", "1")


# --------------------------------------------------------------------------- embedded servers


async def test_explicit_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", redis_url_explicit=True, data_dir=str(tmp_path))
    with pytest.raises(
        ServerUnreachable, match=r"Redis at redis://127\.0\.0\.1:1/0 is not reachable.*MASKLINE_REDIS_URL"
    ):
        await ensure_servers(settings)


async def test_explicit_unreachable_postgres_is_a_clear_error(redis_url: str, tmp_path: Path) -> None:
    settings = Settings(
        redis_url=redis_url,
        database_url="postgresql://postgres@127.0.0.1:1/maskline",
        database_url_explicit=True,
        data_dir=str(tmp_path),
    )
    with pytest.raises(ServerUnreachable, match="Postgres at .* is not reachable.*MASKLINE_DATABASE_URL"):
        await ensure_servers(settings)


async def test_reachable_servers_are_kept_and_a_missing_database_is_created(
    redis_url: str, database_url: str, tmp_path: Path
) -> None:
    name = f"maskline_test_created_{uuid.uuid4().hex[:8]}"
    wanted = Settings(
        redis_url=redis_url, database_url=with_database(database_url, name), data_dir=str(tmp_path)
    )
    try:
        resolved, servers = await ensure_servers(wanted)
        assert servers.redis is None and servers.postgres is None
        assert resolved == wanted
        conn = await asyncpg.connect(resolved.database_url)
        assert await conn.fetchval("SELECT current_database()") == name
        await conn.close()
        assert await ensure_database(resolved.database_url) is False  # already there
    finally:
        admin = await asyncpg.connect(with_database(database_url, "postgres"))
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


# --------------------------------------------------------------------------- fake Twilio and signing


async def test_fake_twilio_creates_a_queued_message_and_logs_it(fake_twilio: FakeTwilio) -> None:
    async with aiohttp.ClientSession(headers=fake_twilio.auth_headers) as http:
        form = {"To": "+15005550006", "From": "+15005550001", "Body": "hello"}
        async with http.post(fake_twilio.messages_url, data=form) as response:
            assert response.status == 201
            message = await response.json()
    assert message["sid"].startswith("SM") and len(message["sid"]) == 34
    assert message["status"] == "queued"
    assert (message["to"], message["from"], message["body"]) == ("+15005550006", "+15005550001", "hello")
    assert fake_twilio.log == [f"POST /2010-04-01/Accounts/{fake_twilio.account_sid}/Messages.json > 201"]
    assert fake_twilio.messages == [form]


async def test_fake_twilio_refuses_requests_without_credentials(fake_twilio: FakeTwilio) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            fake_twilio.messages_url, data={"To": "+1", "From": "+2", "Body": "x"}
        ) as response:
            assert response.status == 401
            assert (await response.json())["code"] == 20003


async def test_fake_twilio_fails_the_next_requests_on_demand(fake_twilio: FakeTwilio) -> None:
    fake_twilio.fail_next(2, 429)
    statuses = []
    async with aiohttp.ClientSession(headers=fake_twilio.auth_headers) as http:
        for _ in range(3):
            async with http.post(
                fake_twilio.messages_url, data={"To": "+1", "From": "+2", "Body": "x"}
            ) as resp:
                statuses.append(resp.status)
                if resp.status == 429:
                    assert (await resp.json())["code"] == 20429
    assert statuses == [429, 429, 201]
    assert [line.rsplit(" ", 1)[1] for line in fake_twilio.log] == ["429", "429", "201"]


async def test_fake_twilio_serves_callback_routes(fake_twilio: FakeTwilio) -> None:
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=403)

    intercept = fake_twilio.route("POST", "/intercept")
    fake_twilio.route("POST", "/out-of-session", refuse)
    async with aiohttp.ClientSession() as http:
        async with http.post(intercept, data={"interactionSid": "KI1"}) as response:
            assert response.status == 200
        async with http.post(fake_twilio.url_for("/out-of-session"), data={"a": "b"}) as response:
            assert response.status == 403
        async with http.get(fake_twilio.url_for("/nowhere")) as response:
            assert response.status == 404
    assert fake_twilio.log == ["POST /intercept > 200", "POST /out-of-session > 403", "GET /nowhere > 404"]
    assert fake_twilio.requests[0].form == {"interactionSid": "KI1"}


async def test_signed_webhook_validates_like_twilio(fake_twilio: FakeTwilio) -> None:
    token = "secret-token"
    url = fake_twilio.route("POST", "/sms")
    params = {"MessageSid": "SM" + "1" * 32, "From": "+15005550006", "To": "+15005550001", "Body": "hi"}
    async with aiohttp.ClientSession() as http:
        response = await post_webhook(http, url, params, token)
    assert response.status == 200
    received = fake_twilio.requests[-1]
    assert received.form == params
    validator = RequestValidator(token)
    assert validator.validate(url, received.form, received.headers["X-Twilio-Signature"])
    assert not validator.validate(url, {**params, "Body": "tampered"}, sign(url, params, token))
