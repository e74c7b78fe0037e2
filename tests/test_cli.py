"""The `maskline` command as an operator runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
from cli_helpers import maskline

from relay.credentials import KeyVerifier


async def test_keys_create_prints_the_secret_once_and_stores_only_a_hash(
    pg: asyncpg.Pool, redis, database_url: str, redis_url: str
) -> None:
    done = await maskline(
        "keys", "create", "--name", "backend", database_url=database_url, redis_url=redis_url
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines() if ":" in line)
    sid, secret = lines["API key SID"].strip(), lines["API key secret"].strip()
    row = await pg.fetchrow("SELECT * FROM api_keys WHERE sid = $1", sid)
    assert row["friendly_name"] == "backend"
    assert secret not in str(dict(row))
    assert row["secret_hash"].startswith("scrypt$")
    key = await KeyVerifier(pg).verify(sid, secret)
    assert key is not None and key.permissions == frozenset({"proxy"})
    assert await KeyVerifier(pg).verify(sid, secret + "x") is None
    # The creation is audited, without the secret.
    events = await redis.xrange("ml:{global}:events")
    created = [e for _, e in events if e["type"] == "key.created"]
    assert len(created) == 1 and sid in created[0]["data"] and secret not in created[0]["data"]


def test_help_explains_each_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maskline", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("serve", "migrate", "keys", "bench"):
        assert command in done.stdout
    done = subprocess.run(
        [sys.executable, "-m", "maskline", "keys", "create", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "only a hash is stored" in done.stdout


def test_bad_configuration_gets_a_clear_message() -> None:
    env = {**os.environ, "MASKLINE_PORT": "eighty"}
    done = subprocess.run(
        [sys.executable, "-m", "maskline", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "MASKLINE_PORT" in done.stderr and "Traceback" not in done.stderr


async def test_unreachable_explicit_redis_is_named(database_url: str) -> None:
    done = await maskline("migrate", database_url=database_url, redis_url="redis://127.0.0.1:1/0")
    assert done.returncode == 2
    assert "MASKLINE_REDIS_URL" in done.stderr and "Traceback" not in done.stderr
