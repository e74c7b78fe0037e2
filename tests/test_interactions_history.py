"""Interactions outlive Redis: once an interaction is past its hot window, or its session is gone
from Redis, the audit log answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, Relay, message_of

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


async def _status(relay: Relay, callback: str, message_sid: str, status: str) -> None:
    path = callback.removeprefix(relay.url)
    code, _ = await relay.post(path, {"MessageSid": message_sid, "MessageStatus": status})
    assert code == 204


async def test_an_interaction_leaves_redis_after_its_hot_window_and_the_audit_log_answers_for_it(
    settings, redis, pg, fake_twilio
) -> None:
    """Redis holds an interaction for its hot window only (its memory per text); after that the
    API lists it from the audit log, merged with the newer ones Redis holds, with the statuses
    Twilio reported even after the window (never moved back), and it can still be deleted."""
    relay = await Relay(replace(settings, interaction_hot_s=1), redis, pg, fake_twilio).start()
    try:
        ks = await relay.service()
        await relay.numbers(ks, PROXY_A, PROXY_B)
        sess = await relay.session(ks, CUSTOMER, COURIER)
        kc = sess["sid"]
        _, xml = await relay.sms(COURIER, sess["proxy"][COURIER], "on my way")
        callback = message_of(xml).get("statusCallback")
        assert callback and f"Session={kc}" in callback
        await _status(relay, callback, "SMout1", "sent")
        [first] = await relay.interactions(ks, kc)
        ki = first["sid"]
        assert first["outbound_resource_status"] == "sent"
        assert 0 < await relay.redis.pttl(keys.interaction(ks, ki)) <= 1000

        writer = AuditWriter(relay.redis, relay.pg, consumer="test")
        await writer.drain_once()
        await asyncio.sleep(1.2)
        assert not await relay.redis.exists(keys.interaction(ks, ki))
        # Twilio reports delivery late, then an older status out of order: the log keeps delivered.
        await _status(relay, callback, "SMout1", "delivered")
        await _status(relay, callback, "SMout1", "sent")
        assert not await relay.redis.exists(keys.interaction(ks, ki))
        _, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "thanks")
        await writer.drain_once()

        listed = await relay.interactions(ks, kc)
        assert [i["data"] for i in listed] == ['{"body":"thanks"}', '{"body":"on my way"}']
        assert listed[1]["sid"] == ki and listed[1]["outbound_resource_status"] == "delivered"
        assert listed[1]["outbound_resource_sid"] == "SMout1"
        status, fetched = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions/{ki}")
        assert status == 200 and fetched["outbound_resource_status"] == "delivered"
        status, page = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{kc}/Interactions?PageSize=1")
        assert status == 200 and [i["sid"] for i in page["interactions"]] == [listed[0]["sid"]]
        status, page = await relay.api("GET", page["meta"]["next_page_url"].removeprefix(relay.url))
        assert status == 200 and [i["sid"] for i in page["interactions"]] == [ki]

        status, _ = await relay.api("DELETE", f"/v1/Services/{ks}/Sessions/{kc}/Interactions/{ki}")
        assert status == 204
        await writer.drain_once()
        assert [i["sid"] for i in await relay.interactions(ks, kc)] == [listed[0]["sid"]]
    finally:
        await relay.stop()


async def test_closing_a_session_never_keeps_its_interactions_past_their_hot_window(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    await relay.sms(COURIER, sess["proxy"][COURIER], "on my way")
    [ix] = await relay.interactions(ks, sess["sid"])
    hot_ms = relay.settings.interaction_hot_s * 1000
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    assert status == 200
    assert 0 < await relay.redis.pttl(keys.interaction(ks, ix["sid"])) <= hot_ms
    assert 0 < await relay.redis.pttl(keys.session_interactions(ks, sess["sid"])) <= hot_ms
    assert await relay.redis.pttl(keys.session(ks, sess["sid"])) > hot_ms  # the session stays readable


async def test_records_written_before_the_hot_window_get_one_on_the_next_interaction(relay: Relay) -> None:
    """After an upgrade, a live session's earlier records (no TTL, no count) are not left in Redis
    for good: the session's next interaction gives them the hot window too."""
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    kc = sess["sid"]
    await relay.sms(COURIER, sess["proxy"][COURIER], "on my way")
    [old] = await relay.interactions(ks, kc)
    for key in (keys.interaction(ks, old["sid"]), keys.session_interactions(ks, kc)):
        await relay.redis.persist(key)  # as the earlier release wrote them
    await relay.redis.hdel(keys.session(ks, kc), "ix_count")
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "thanks")
    hot_ms = relay.settings.interaction_hot_s * 1000
    assert 0 < await relay.redis.pttl(keys.interaction(ks, old["sid"])) <= hot_ms
    assert [i["data"] for i in await relay.interactions(ks, kc)] == [
        '{"body":"thanks"}',
        '{"body":"on my way"}',
    ]


async def test_an_interaction_stores_no_sid_no_resource_type_and_no_empty_field(relay: Relay) -> None:
    """Redis memory per text: the record leaves out what its key and its type tell (sid, Message
    or Call) and its empty fields; the API shows them all, for a relayed text and a proactive one."""
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    kc, kp = sess["sid"], sess["participants"][CUSTOMER]
    await relay.sms(COURIER, sess["proxy"][COURIER], "on my way")
    status, sent = await relay.api(
        "POST", f"/v1/Services/{ks}/Sessions/{kc}/Participants/{kp}/MessageInteractions", {"Body": "hi"}
    )
    assert status == 201, sent
    proactive, relayed = await relay.interactions(ks, kc)
    assert proactive["sid"] == sent["sid"]
    for ix in (proactive, relayed):
        stored = await relay.redis.hgetall(keys.interaction(ks, ix["sid"]))
        assert not {"sid", "inbound_resource_type", "outbound_resource_type"} & set(stored), stored
        assert all(value != "" for value in stored.values()), stored
        assert ix["outbound_resource_type"] == "Message"
    assert relayed["inbound_resource_type"] == "Message" and relayed["inbound_resource_url"]
    assert proactive["inbound_resource_type"] is None and proactive["inbound_resource_sid"] is None
