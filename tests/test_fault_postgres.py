"""Postgres stops (pg_ctl stop -m fast on a private cluster) under texts and comes back.

What must hold: every text is still relayed (the hot path needs only Redis), /readyz says
not-ready meanwhile, and once Postgres is back the audit writer stores every event: none lost."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from _audit_fixtures import paced
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay, parse

from audit.queries import query_events
from maskline.devpostgres import EmbeddedPostgres
from maskline.migrate import apply_migrations

TEXTS_PER_S = 50
BEFORE_S, DOWN_S, AFTER_S = 1.0, 4.0, 1.0


class PrivatePostgres:
    """A cluster of the test's own, stopped and started again on the same port."""

    def __init__(self, directory: Path) -> None:
        self.server = EmbeddedPostgres.start(directory / "pgdata")

    @property
    def url(self) -> str:
        return self.server.url("maskline_fault_test")

    def stop(self) -> None:
        self.server._run("pg_ctl", "-D", str(self.server.pgdata), "-m", "fast", "-w", "stop")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.server.port} -c unix_socket_directories=''"
        log = str(self.server.pgdata / "server.log")
        self.server._run("pg_ctl", "-D", str(self.server.pgdata), "-l", log, "-o", options, "-w", "start")

    def close(self) -> None:
        self.server.owned = True
        self.server.stop()


@pytest.fixture
async def private_pg(tmp_path: Path) -> AsyncIterator[PrivatePostgres]:
    try:
        server = await asyncio.to_thread(PrivatePostgres, tmp_path)
    except Exception as err:  # pragma: no cover - the dev extras ship pgserver
        pytest.fail(f"cannot start a private Postgres from the pgserver wheel: {err}")
    try:
        admin = await asyncpg.connect(server.server.url("postgres"))
        await admin.execute("CREATE DATABASE maskline_fault_test")
        await admin.close()
        await apply_migrations(server.url)
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def test_postgres_down_texts_still_relay_and_no_event_is_lost(
    settings, redis, fake_twilio, private_pg
) -> None:
    pg = await asyncpg.create_pool(private_pg.url, min_size=1, max_size=10)
    relay = Relay(dataclasses.replace(settings, database_url=private_pg.url), redis, pg, fake_twilio)
    await relay.start(audit_writer=True)
    try:
        ks = await relay.service()
        await relay.numbers(ks, PROXY_A, PROXY_B)
        proxy = (await relay.session(ks, CUSTOMER, COURIER))["proxy"]
        answers: dict[str, bool] = {}
        ready: list[int] = []

        async def text(i: int) -> None:
            sender = CUSTOMER if i % 2 else COURIER
            sid = "SM" + secrets.token_hex(16)
            _, xml = await relay.sms(sender, proxy[sender], f"text {i}", sid=sid)
            message = parse(xml).find("Message")
            answers[sid] = message is not None and message.get("to") is not None

        async def outage() -> float:
            await asyncio.sleep(BEFORE_S)
            await asyncio.to_thread(private_pg.stop)
            async with aiohttp.ClientSession() as http:
                await asyncio.sleep(1.0)
                async with http.get(relay.local + "/readyz") as resp:
                    ready.append(resp.status)
            await asyncio.sleep(DOWN_S - 1.0)
            await asyncio.to_thread(private_pg.start)
            return time.monotonic()

        back, _ = await asyncio.gather(
            outage(), paced(TEXTS_PER_S, int(TEXTS_PER_S * (BEFORE_S + DOWN_S + AFTER_S)), text)
        )
        assert ready == [503], "/readyz should say not-ready while Postgres is down"
        assert all(answers.values()), f"{sum(not v for v in answers.values())} texts were not relayed"

        # The in-process audit writer catches up once Postgres is back: every text is stored.
        stored: set[str] = set()
        while len(stored & answers.keys()) < len(answers):
            assert time.monotonic() - back < 30, (
                f"{len(answers) - len(stored & answers.keys())} events never stored"
            )
            await asyncio.sleep(0.2)
            cursor = None
            while True:
                events, cursor = await query_events(
                    pg, service_sids={ks}, types=["interaction.created"], limit=1000, cursor=cursor
                )
                stored.update(e.data.get("inbound_resource_sid", "") for e in events)
                if cursor is None:
                    break
        caught_up_s = time.monotonic() - back
        print(
            f"\n{len(answers)} texts relayed through a {DOWN_S:.0f} s Postgres outage; audit caught up {caught_up_s:.1f} s after"
        )
    finally:
        await relay.stop()
        await pg.close()
