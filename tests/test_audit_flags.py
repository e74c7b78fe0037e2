"""A stored row that was altered (or cannot be read) never stops a query or an export: it is
flagged in the output, the rest is exported, and the CLI exits non-zero at the end."""

from __future__ import annotations

import csv
import io

from _audit_fixtures import add_service, emit_many
from cli_helpers import maskline

from audit.queries import export_events, query_events
from audit.writer import AuditWriter


async def _alter_row(pg, seq: int) -> None:
    async with pg.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")  # past the append-only trigger
        await conn.execute(
            "UPDATE audit_events SET data = jsonb_set(data::jsonb, '{sid}', '\"KIforged\"')::text::jsonb WHERE seq = $1",
            seq,
        )


async def test_an_altered_row_is_flagged_and_the_rest_exported(
    redis, pg, tmp_path, redis_url, database_url
) -> None:
    service = await add_service(pg)
    await emit_many(redis, [service], 12)
    await AuditWriter(redis, pg, consumer="w").drain_once()
    await _alter_row(pg, 5)

    events, _ = await query_events(pg, service_sids={service}, limit=100)
    assert len(events) == 12
    assert [e.seq for e in events if e.flag] == [5]
    assert "altered" in (next(e for e in events if e.flag).flag or "")

    flagged = []
    chunks = [c async for c in export_events(pg, service_sids={service}, fmt="csv", on_flag=flagged.append)]
    rows = list(csv.DictReader(io.StringIO(b"".join(chunks).decode())))
    assert len(rows) == 12 and [r["seq"] for r in rows if r["flag"]] == ["5"]
    assert [e.seq for e in flagged] == [5]

    out = tmp_path / "export.csv"
    done = await maskline("audit", "export", "-o", str(out), database_url=database_url, redis_url=redis_url)
    assert done.returncode == 1, done.stderr
    assert "flagged" in done.stderr and "Traceback" not in done.stderr
    assert sum(1 for r in csv.DictReader(out.open()) if r["service_sid"] == service) == 12
