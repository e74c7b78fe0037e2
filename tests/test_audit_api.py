"""The compliance read API over real HTTP: permission, tenant isolation, paging, streaming export,
and every read recorded in the audit log itself."""

from __future__ import annotations

import csv
import io
from typing import Any

import aiohttp
import orjson
from _audit_fixtures import add_service, emit_many
from api_helpers import RunningApp, running_app

from audit.queries import query_events
from audit.writer import AuditWriter
from relay.credentials import create_key

AUDIT = frozenset({"audit"})
PROXY_NUMBER = "+15550000999"


async def _get(
    app: RunningApp, path: str, *, key: tuple[str, str] | None = None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    sid, secret = key or (app.key_sid, app.key_secret)
    headers = {"Authorization": aiohttp.encode_basic_auth(sid, secret)}
    async with app.http.get(app.base + path, headers=headers) as resp:
        raw = await resp.read()
        body = orjson.loads(raw) if resp.content_type == "application/json" else raw
        return resp.status, body, resp


async def _stored(redis, pg, *services: str | None, count: int) -> None:
    await emit_many(redis, list(services), count)
    await AuditWriter(redis, pg, consumer="w").drain_once()


async def test_a_key_without_the_audit_permission_is_refused(settings, redis, pg):
    service = await add_service(pg)
    await _stored(redis, pg, service, count=3)
    async with running_app(settings, redis, pg, permissions=frozenset({"proxy"})) as app:
        for path in ("/v1/Audit/Events", "/v1/Audit/Events.csv", "/v1/Audit/Events?Format=jsonl"):
            status, body, _ = await _get(app, path)
            assert status == 403 and body["code"] == 20403, (path, body)
            assert "audit" in body["message"]


async def test_query_by_number_pages_with_absolute_next_page_urls(settings, redis, pg):
    service = await add_service(pg)
    await _stored(redis, pg, service, count=200)
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        seen: list[dict[str, Any]] = []
        path = f"/v1/Audit/Events?Number=%2B15550000007&Service={service}&PageSize=2"
        pages = 0
        while path:
            status, body, _ = await _get(app, path)
            assert status == 200, body
            seen += body["events"]
            pages += 1
            next_url = body["meta"]["next_page_url"]
            if next_url is None:
                break
            assert next_url.startswith(app.base + "/v1/Audit/Events?")
            assert "Number=%2B15550000007" in next_url and "PageSize=2" in next_url
            path = next_url[len(app.base) :]
    assert len(seen) == 4 and pages == 2  # i % 50 == 7 among 200
    assert all(e["data"]["from"] == "+15550000007" and e["service_sid"] == service for e in seen)
    assert [(e["ts"], e["id"]) for e in seen] == sorted((e["ts"], e["id"]) for e in seen)
    assert len({e["id"] for e in seen}) == 4


async def test_filters_by_session_type_and_time(settings, redis, pg):
    service = await add_service(pg)
    await _stored(redis, pg, service, count=70)
    session = f"KC{3:032x}"
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        status, body, _ = await _get(app, f"/v1/Audit/Events?Session={session}&PageSize=1000")
        assert status == 200 and len(body["events"]) == 10
        assert {e["session_sid"] for e in body["events"]} == {session}
        _, body, _ = await _get(app, f"/v1/Audit/Events?Session={session}&Type=session.created")
        assert body["events"] == []
        _, body, _ = await _get(app, "/v1/Audit/Events?Until=2000-01-01T00:00:00Z")
        assert body["events"] == []
        _, body, _ = await _get(app, "/v1/Audit/Events?Since=2000-01-01T00:00:00Z&Type=interaction.created")
        assert len(body["events"]) == 50 and body["meta"]["next_page_url"]


async def test_bad_filters_say_what_to_fix(settings, redis, pg):
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        for query, hint in (
            ("Number=5551234", "Number"),
            ("Session=KCnope", "Session"),
            ("Service=bogus", "Service"),
            ("Since=yesterday", "Since"),
            ("Since=2030-01-02T00:00:00Z&Until=2030-01-01T00:00:00Z", "Since"),
            ("Type=DROP TABLE", "Type"),
            ("PageSize=0", "PageSize"),
            ("PageToken=forged", "PageToken"),
            ("Format=xml", "Format"),
        ):
            status, body, _ = await _get(app, f"/v1/Audit/Events?{query}")
            assert status == 400 and body["code"] == 20422, (query, body)
            assert hint in body["message"], (query, body)


async def test_a_service_scoped_key_never_sees_another_services_events(settings, redis, pg):
    mine, theirs = await add_service(pg), await add_service(pg)
    await _stored(redis, pg, mine, theirs, None, count=90)
    scoped = await create_key(pg, "tenant", permissions=AUDIT, service_sids=[mine])
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        status, body, _ = await _get(
            app, f"/v1/Audit/Events?Number={PROXY_NUMBER.replace('+', '%2B')}&PageSize=1000", key=scoped
        )
        assert status == 200 and len(body["events"]) == 30
        assert {e["service_sid"] for e in body["events"]} == {mine}

        status, body, _ = await _get(app, f"/v1/Audit/Events?Service={theirs}", key=scoped)
        assert status == 403 and body["code"] == 20403
        status, body, _ = await _get(app, "/v1/Audit/Events.jsonl", key=scoped)
        assert status == 200
        lines = [orjson.loads(line) for line in body.splitlines()]
        assert len(lines) == 30 and {e["service_sid"] for e in lines} == {mine}

        # The unscoped key sees everything, including events of no Service.
        status, body, _ = await _get(app, "/v1/Audit/Events?PageSize=1000")
        assert {e["service_sid"] for e in body["events"]} == {mine, theirs, None}


async def test_a_session_only_another_tenant_has_reads_as_absent(settings, redis, pg):
    mine, theirs = await add_service(pg), await add_service(pg)
    await _stored(redis, pg, theirs, count=5)
    scoped = await create_key(pg, "tenant", permissions=AUDIT, service_sids=[mine])
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        session = f"KC{1:032x}"
        status, body, _ = await _get(app, f"/v1/Audit/Events?Session={session}", key=scoped)
        assert status == 404 and body["code"] == 20404
        status, body, _ = await _get(app, f"/v1/Audit/Events?Session={session}")
        assert status == 200 and body["events"]


async def test_export_streams_a_large_result_as_csv(settings, redis, pg):
    service = await add_service(pg)
    await _stored(redis, pg, service, count=5000)
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        headers = {"Authorization": aiohttp.encode_basic_auth(app.key_sid, app.key_secret)}
        async with app.http.get(f"{app.base}/v1/Audit/Events.csv?Service={service}", headers=headers) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/csv")
            assert resp.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in resp.headers
            received, pieces = bytearray(), 0
            async for piece in resp.content.iter_any():
                received += piece
                pieces += 1
    rows = list(csv.DictReader(io.StringIO(received.decode())))
    assert len(rows) == 5000 and pieces > 1
    assert {orjson.loads(r["data"])["body"] for r in rows} == {f"message {i}" for i in range(5000)}


async def test_every_query_and_export_is_itself_recorded(settings, redis, pg):
    service = await add_service(pg)
    await _stored(redis, pg, service, count=10)
    scoped = await create_key(pg, "tenant", permissions=AUDIT, service_sids=[service])
    async with running_app(settings, redis, pg, permissions=AUDIT) as app:
        status, _, _ = await _get(
            app, "/v1/Audit/Events?Number=%2B15550000003&Type=interaction.created", key=scoped
        )
        assert status == 200
        status, _, _ = await _get(app, "/v1/Audit/Events?Format=csv")
        assert status == 200
    await AuditWriter(redis, pg, consumer="w").drain_once()

    queried, _ = await query_events(pg, service_sids={service}, types={"audit.queried"})
    assert len(queried) == 1
    data = queried[0].data
    assert data["actor"] == scoped[0] and data["via"] == "api"
    assert data["filters"]["number"] == "+15550000003"  # stored as a token, revealed to readers
    assert data["filters"]["types"] == ["interaction.created"]
    raw = await pg.fetchval("SELECT data FROM audit_events WHERE id = $1", queried[0].id)
    assert "+15550000003" not in raw

    exported, _ = await query_events(pg, service_sids=None, types={"audit.exported"})
    assert len(exported) == 1 and exported[0].service_sid is None
    assert exported[0].data["format"] == "csv"
