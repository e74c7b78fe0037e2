"""Test fixtures on real Redis and Postgres (never mocks).

Servers, in order of preference:
- MASKLINE_TEST_REDIS_URL / MASKLINE_TEST_DATABASE_URL when set;
- Redis DB 13 on 127.0.0.1:6379 and database `maskline_test` on 127.0.0.1:5432 (user postgres);
- embedded servers from the wheels (maskline/devservers.py), also forced with MASKLINE_TEST_FORCE_EMBEDDED=1;
- MASKLINE_TEST_REDIS=cluster: a 3-master Redis Cluster of the session's own (tests/redis_cluster.py),
  which `make test-cluster` runs the core, relay and audit tests against.
The test database is dropped and re-created once per session, then migrated. Before each test the
test Redis DB is flushed (that DB only) and every table but schema_migrations is truncated.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis
from fake_twilio import FakeTwilio
from private_redis import PrivateRedis
from redis_cluster import RedisClusterUnderTest

from core.connections import redis_client
from core.settings import Settings
from maskline.devservers import EmbeddedServers, database_name, ensure_servers, with_database
from maskline.migrate import apply_migrations

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/13"
DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/maskline_test"
TEST_ACCOUNT_SID = "AC" + "7e57" * 8
TEST_AUTH_TOKEN = "maskline-test-auth-token"
SESSION_LOCK_WAIT_S = 900

# Every table the app owns is truncated; these schemas are Postgres' own.
LIST_TABLES = """
SELECT format('%I.%I', table_schema, table_name)
  FROM information_schema.tables
 WHERE table_type = 'BASE TABLE'
   AND table_schema NOT IN ('pg_catalog', 'information_schema')
   AND table_schema NOT LIKE 'pg_toast%'
   AND table_name <> 'schema_migrations'
"""


@dataclass(frozen=True)
class ServersUnderTest:
    redis_url: str
    database_url: str
    data_dir: str
    embedded: EmbeddedServers


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def _session_lock() -> Iterator[None]:
    """Serialise test sessions that share servers: they flush and drop the same test DBs."""
    key = "|".join(
        (
            os.environ.get("MASKLINE_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL),
            os.environ.get("MASKLINE_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL),
            str(_env_flag("MASKLINE_TEST_FORCE_EMBEDDED")),
        )
    )
    path = Path(tempfile.gettempdir()) / f"maskline-test-{hashlib.sha1(key.encode()).hexdigest()[:12]}.lock"
    with open(path, "a") as handle:
        deadline = time.monotonic() + SESSION_LOCK_WAIT_S
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.exit(f"another test session held {path} for {SESSION_LOCK_WAIT_S} s", returncode=3)
                if not told:
                    print(f"\nwaiting for another Maskline test session to finish ({path}) ...", flush=True)
                    told = True
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
async def test_servers(
    _session_lock: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[ServersUnderTest]:
    force = _env_flag("MASKLINE_TEST_FORCE_EMBEDDED")
    data_dir = str(tmp_path_factory.mktemp("embedded"))
    wanted = Settings(
        redis_url=os.environ.get("MASKLINE_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL),
        database_url=os.environ.get("MASKLINE_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL),
        redis_url_explicit="MASKLINE_TEST_REDIS_URL" in os.environ,
        database_url_explicit="MASKLINE_TEST_DATABASE_URL" in os.environ,
        data_dir=data_dir,
        embedded="always" if force else "auto",
    )
    cluster = RedisClusterUnderTest().start() if _wants_cluster() else None
    if cluster is not None:
        wanted = dataclasses.replace(wanted, redis_url=cluster.url, redis_url_explicit=True)
    resolved, embedded = await ensure_servers(wanted)
    try:
        await _recreate_database(resolved.database_url)
        await apply_migrations(resolved.database_url)
        yield ServersUnderTest(resolved.redis_url, resolved.database_url, data_dir, embedded)
    finally:
        await embedded.stop()
        if cluster is not None:
            cluster.stop()


def _wants_cluster() -> bool:
    return os.environ.get("MASKLINE_TEST_REDIS", "").strip().lower() == "cluster"


async def _recreate_database(dsn: str) -> None:
    name = database_name(dsn)
    # The session drops this database: refuse anything that does not look like a test database,
    # so a stray MASKLINE_TEST_DATABASE_URL can never point this at real data.
    if "test" not in name:
        raise pytest.UsageError(f"refusing to drop database {name!r}: its name must contain 'test'")
    quoted = '"' + name.replace('"', '""') + '"'
    admin = await asyncpg.connect(with_database(dsn, "postgres"))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {quoted}")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def redis_url(test_servers: ServersUnderTest) -> str:
    return test_servers.redis_url


@pytest.fixture(scope="session")
def database_url(test_servers: ServersUnderTest) -> str:
    return test_servers.database_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = redis_client(redis_url, max_connections=16)
    await client.flushdb()  # the test DB of the URL only (every master of a test cluster)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    # A pool per test: a test (or an app it builds) may close the pool it was given.
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=10)
    try:
        async with pool.acquire() as conn:
            tables = [row[0] for row in await conn.fetch(LIST_TABLES)]
            if tables:
                async with conn.transaction():
                    # replica role skips user triggers (an append-only audit table may refuse
                    # TRUNCATE through one); tests connect as a superuser, which may set it.
                    await conn.execute("SET LOCAL session_replication_role = replica")
                    await conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def fake_twilio() -> AsyncIterator[FakeTwilio]:
    async with FakeTwilio(account_sid=TEST_ACCOUNT_SID, auth_token=TEST_AUTH_TOKEN) as fake:
        yield fake


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def app_port() -> int:
    """A free port for the app under test; settings.public_url points at it (signed webhook URLs)."""
    return _free_port()


@pytest.fixture
def settings(
    test_servers: ServersUnderTest,
    redis: aioredis.Redis,
    pg: asyncpg.Pool,
    fake_twilio: FakeTwilio,
    app_port: int,
) -> Settings:
    """Settings for an app under test: clean test servers, the fake Twilio, a known auth token.

    Depends on `redis` and `pg` so that a test using only `settings` still starts from empty state.
    """
    return Settings(
        redis_url=test_servers.redis_url,
        database_url=test_servers.database_url,
        redis_url_explicit=True,
        database_url_explicit=True,
        public_url=f"http://127.0.0.1:{app_port}",
        host="127.0.0.1",
        port=app_port,
        twilio_account_sid=TEST_ACCOUNT_SID,
        twilio_auth_token=TEST_AUTH_TOKEN,
        twilio_api_url=fake_twilio.url,
        data_dir=test_servers.data_dir,
        embedded="never",
    )


@pytest.fixture
async def relay(settings, redis, pg, fake_twilio):  # type: ignore[no-untyped-def]
    """The app under test on its real port (relay_harness.Relay), stopped afterwards."""
    from relay_harness import Relay

    r = await Relay(settings, redis, pg, fake_twilio).start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def private_redis() -> AsyncIterator[tuple[PrivateRedis, aioredis.Redis]]:
    """A redis-server of the test's own (fault tests stop, stall or kill it; tests/private_redis.py)
    and a client of it."""
    server = PrivateRedis().start()
    client = aioredis.from_url(server.url, decode_responses=True)
    try:
        yield server, client
    finally:
        await client.aclose()
        server.stop()
