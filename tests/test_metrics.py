"""GET /metrics counts what was sent (webhooks by kind and outcome, API requests by route and status,
errors by code) and reads the stores (up, pool numbers, pairs in use, audit lag); JSON logs and the
API's access log carry a request id and never a query string."""

from __future__ import annotations

import dataclasses
import json
import logging

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from relay_harness import COURIER, CUSTOMER, Relay, world

from maskline.logs import JsonFormatter


async def _scrape(
    relay: Relay, headers: dict[str, str] | None = None
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert relay.http is not None
    async with relay.http.get(relay.local + "/metrics", headers=headers or {}) as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return float(samples.get((name, tuple(sorted(labels.items()))), 0.0))


async def test_metrics_count_what_was_sent_and_read_the_stores(relay: Relay) -> None:
    ks, sess = await world(relay)
    before = await _scrape(relay)
    for i in range(7):
        status, _ = await relay.sms(CUSTOMER, sess["proxy"][COURIER], f"hi {i}")
        assert status == 200
    status, _ = await relay.post("/twilio/sms", {"From": CUSTOMER}, token="wrong token")
    assert status == 403
    for _ in range(3):
        assert (await relay.api("GET", f"/v1/Services/{ks}/Sessions"))[0] == 200
    assert (await relay.api("POST", "/v1/Services", {"UniqueName": "dup"}))[0] == 201
    assert (await relay.api("POST", "/v1/Services", {"UniqueName": "dup"}))[0] == 409
    after = await _scrape(relay)

    def delta(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert delta("maskline_webhook_seconds_count", kind="sms", outcome="answered") == 7
    assert delta("maskline_webhook_seconds_count", kind="sms", outcome="refused") == 1
    route = "/v1/Services/{ServiceSid}/Sessions"
    assert delta("maskline_api_seconds_count", method="GET", route=route, status="200") == 3
    assert delta("maskline_api_seconds_count", method="POST", route="/v1/Services", status="409") == 1
    assert delta("maskline_api_errors_total", code="80602") == 1
    assert _value(after, "maskline_store_up", store="redis") == 1
    assert _value(after, "maskline_store_up", store="postgres") == 1
    assert _value(after, "maskline_pool_numbers", service=ks) == 2
    assert _value(after, "maskline_pairs_in_use", service=ks) == 2  # the session's two participants
    assert ("maskline_audit_lag_events", (("service", ks),)) in after  # no writer here: events wait


async def test_a_metrics_token_is_required_when_set(settings, redis, pg, fake_twilio) -> None:
    guarded = dataclasses.replace(settings, metrics_token="s3cret-scrape")
    relay = await Relay(guarded, redis, pg, fake_twilio).start()
    try:
        assert relay.http is not None
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            async with relay.http.get(relay.local + "/metrics", headers=headers) as resp:
                assert resp.status == 401
        await _scrape(relay, {"Authorization": "Bearer s3cret-scrape"})
    finally:
        await relay.stop()


async def test_the_access_log_names_request_id_route_status_and_no_query(relay: Relay, caplog) -> None:
    assert relay.http is not None
    with caplog.at_level(logging.INFO, logger="maskline.access"):
        async with relay.http.get(
            relay.local + "/v1/Audit/Events?Number=%2B14155550101",
            headers={**relay.auth, "X-Request-Id": "req-42"},
        ) as resp:
            assert resp.headers["X-Request-Id"] == "req-42"
        async with relay.http.get(
            relay.local + "/v1/Services", headers={"Authorization": aiohttp.encode_basic_auth("SKnope", "x")}
        ) as resp:
            assert resp.status == 401 and len(resp.headers["X-Request-Id"]) == 16
    lines = [r for r in caplog.records if r.name == "maskline.access"]
    assert len(lines) == 2
    assert getattr(lines[0], "request_id", None) == "req-42" and "/v1/Audit/Events" in lines[0].getMessage()
    assert all("4155550101" not in r.getMessage() for r in lines)
    assert getattr(lines[1], "status", None) == 401 and getattr(lines[1], "code", None) == 20003


def test_json_logs_are_one_object_per_line_with_the_request_fields() -> None:
    record = logging.LogRecord(
        "maskline.access", logging.INFO, __file__, 1, "GET %s %d", ("/v1/Services", 200), None
    )
    record.request_id, record.status, record.latency_ms = "abc", 200, 1.5
    line = JsonFormatter().format(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["event"] == "GET /v1/Services 200" and parsed["level"] == "INFO"
    assert (parsed["request_id"], parsed["status"], parsed["latency_ms"]) == ("abc", 200, 1.5)
    assert parsed["time"].endswith("+00:00")


@pytest.mark.parametrize("fmt", ["xml", ""])
def test_a_bad_log_format_is_refused_naming_the_variable(fmt: str) -> None:
    from core.settings import Settings

    with pytest.raises(ValueError, match="MASKLINE_LOG_FORMAT"):
        Settings.from_env({"MASKLINE_LOG_FORMAT": fmt})


async def test_the_webhook_access_log_is_off_by_default_and_masks_numbers(
    settings, redis, pg, fake_twilio, caplog
) -> None:
    sess: dict = {}  # type: ignore[type-arg]
    for enabled in (False, True):
        relay = await Relay(
            dataclasses.replace(settings, webhook_access_log=enabled), redis, pg, fake_twilio
        ).start()
        try:
            if not sess:
                _, sess = await world(relay)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="maskline.access"):
                assert (await relay.sms(CUSTOMER, sess["proxy"][COURIER], f"hi {enabled}"))[0] == 200
        finally:
            await relay.stop()
        lines = [r for r in caplog.records if r.name == "maskline.access" and "webhook" in r.getMessage()]
        if not enabled:
            assert lines == []
            continue
        assert len(lines) == 1 and getattr(lines[0], "outcome", None) == "answered"
        assert "webhook sms SM" in lines[0].getMessage() and CUSTOMER not in lines[0].getMessage()
