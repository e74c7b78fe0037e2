"""`maskline audit verify` and `maskline audit export` as an operator runs them."""

from __future__ import annotations

import orjson
from _audit_fixtures import add_service, emit_many
from cli_helpers import maskline

from audit.queries import query_events
from audit.writer import AuditWriter


async def test_verify_says_ok_then_points_at_a_tampered_row(redis, pg, redis_url, database_url):
    service = await add_service(pg)
    await emit_many(redis, [service], 30)
    await AuditWriter(redis, pg, consumer="w").drain_once()

    done = await maskline("audit", "verify", database_url=database_url, redis_url=redis_url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 30 events in 1 chains")
    assert "verified 30 events, 1 of 1 chains" in done.stderr  # the progress line

    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("UPDATE audit_events SET type = 'session.created' WHERE seq = 7")
    done = await maskline(
        "audit", "verify", "--service", service, database_url=database_url, redis_url=redis_url
    )
    assert done.returncode == 1
    assert "BROKEN" in done.stdout and "altered" in done.stdout and "7" in done.stdout
    assert "Traceback" not in done.stderr


async def test_export_writes_the_file_shows_progress_and_is_recorded(
    redis, pg, redis_url, database_url, tmp_path
):
    service = await add_service(pg)
    await emit_many(redis, [service], 200)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    out = tmp_path / "export.jsonl"

    done = await maskline(
        "audit",
        "export",
        "--number",
        "+15550000007",
        "--since",
        "2000-01-01",
        "--format",
        "jsonl",
        "-o",
        str(out),
        database_url=database_url,
        redis_url=redis_url,
    )
    assert done.returncode == 0, done.stderr
    assert "exported 4 lines" in done.stderr
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == 4 and all(e["data"]["from"] == "+15550000007" for e in lines)

    await AuditWriter(redis, pg, consumer="w").drain_once()
    recorded, _ = await query_events(pg, service_sids=None, types={"audit.exported"})
    assert len(recorded) == 1
    assert recorded[0].data["via"] == "cli" and recorded[0].data["format"] == "jsonl"
    assert recorded[0].data["filters"]["number"] == "+15550000007"
