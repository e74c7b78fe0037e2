"""Helpers for the audit tests: a TCP proxy to take Postgres away and bring it back, event makers."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from core.events import emit_event

__all__ = ["TcpProxy", "emit_many", "add_service", "count_rows", "new_sid", "final_outcomes", "paced"]


def new_sid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server. `stop()` refuses new connections and cuts the open
    ones, like a Postgres that went away; `start()` brings it back on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


async def emit_many(
    redis: aioredis.Redis, service_sids: list[str | None], count: int, *, ts_ms: int | None = None
) -> list[str]:
    """`count` interaction events spread over the Services, each about two numbers."""
    ids = []
    for i in range(count):
        sid = service_sids[i % len(service_sids)]
        data: dict[str, Any] = {
            "sid": new_sid("KI"),
            "session_sid": f"KC{i % 7:032x}",
            "from": f"+1555{i % 50:07d}",
            "to": "+15550000999",
            "body": f"message {i}",
            "numbers": [f"+1555{i % 50:07d}", "+15550000999"],
        }
        ids.append(
            await emit_event(redis, service_sid=sid, type="interaction.created", data=data, ts_ms=ts_ms)
        )
    return ids


async def add_service(pg: asyncpg.Pool, *, body_policy: str | None = None) -> str:
    sid = new_sid("KS")
    options = "{}" if body_policy is None else f'{{"body_policy": "{body_policy}"}}'
    await pg.execute(
        "INSERT INTO services (sid, account_sid, unique_name, options) VALUES ($1, $2, $3, $4::jsonb)",
        sid,
        "AC" + "0" * 32,
        sid,
        options,
    )
    return sid


async def count_rows(pg: asyncpg.Pool) -> tuple[int, int]:
    """(rows, distinct ids) in audit_events."""
    row = await pg.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS d FROM audit_events")
    return int(row["n"]), int(row["d"])


async def final_outcomes(pg: asyncpg.Pool, service_sid: str) -> dict[str, str]:
    """The audit log's last word on each inbound text or call of a Service: MessageSid / CallSid
    -> the outcome of its interaction's latest created/updated event."""
    from audit.queries import query_events

    final: dict[str, str] = {}
    cursor = None
    while True:
        events, cursor = await query_events(
            pg,
            service_sids={service_sid},
            types=["interaction.created", "interaction.updated"],
            limit=1000,
            cursor=cursor,
        )
        for e in events:
            sid = e.data.get("inbound_resource_sid")
            if sid and e.data.get("outcome"):
                final[sid] = e.data["outcome"]
        if cursor is None:
            return final


async def paced(rate_per_s: float, count: int, job: Any) -> None:
    """Start `job(i)` for i in range(count) at `rate_per_s` (open loop: a slow answer does not
    slow the load), then wait for all of them."""
    import time

    tasks, start = [], time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
        tasks.append(asyncio.create_task(job(i)))
    await asyncio.gather(*tasks)
