"""Interactions outlive Redis: once the session is gone from Redis, the audit log answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay

from audit.writer import AuditWriter
from core import keys


@pytest.fixture
async def relay(settings, redis, pg, fake_twilio) -> AsyncIterator[Relay]:
    running = Relay(settings, redis, pg, fake_twilio)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_interactions_are_served_from_the_audit_log_after_redis_forgets_the_session(
    relay: Relay,
) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    kc = sess["sid"]
    for body in ("on my way", "at the door"):
        status, _ = await relay.sms(COURIER, sess["proxy"][COURIER], body)
        assert status == 200
    status, live = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions")
    assert status == 200 and len(live["interactions"]) == 2

    # The writer stores the events; then Redis forgets the session (retention ended).
    writer = AuditWriter(relay.redis, relay.pg, consumer="test")
    assert await writer.drain_once() > 0
    await relay.redis.delete(keys.session(ks, kc), keys.session_interactions(ks, kc))
    for ix in live["interactions"]:
        await relay.redis.delete(keys.interaction(ks, ix["sid"]))

    status, history = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions")
    assert status == 200
    assert {i["sid"] for i in history["interactions"]} == {i["sid"] for i in live["interactions"]}
    by_sid = {i["sid"]: i for i in live["interactions"]}
    for ix in history["interactions"]:
        for field in (
            "type",
            "inbound_participant_sid",
            "outbound_participant_sid",
            "inbound_resource_sid",
            "url",
        ):
            assert ix[field] == by_sid[ix["sid"]][field]
    one = history["interactions"][0]
    status, fetched = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions/{one['sid']}")
    assert status == 200 and fetched["sid"] == one["sid"]
    status, missing = await relay.api("GET", f"/v1/Services/{ks}/Sessions/KC{'0' * 32}/Interactions")
    assert status == 404 and missing["code"] == 20404
