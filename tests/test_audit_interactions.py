"""Interactions of a session Redis has forgotten, rebuilt from the audit log."""

from __future__ import annotations

from typing import Any

import orjson
from _audit_fixtures import add_service, new_sid

from audit.erase import erase_number
from audit.queries import interactions_from_audit
from audit.writer import AuditWriter
from core.events import emit_event

CUSTOMER, COURIER, PROXY = "+15550001001", "+15550001002", "+15550009000"
T0 = 1_900_000_000_000


def _inbound(session: str, ki: str, *, kp_from: str, kp_to: str, body: str, now_ms: int) -> dict[str, Any]:
    """The `interaction.created` data route_inbound.lua emits: the interaction hash (all strings,
    `data` as Twilio's JSON text) plus `numbers`, `inbound_identifier`, `outbound_identifier`."""
    return {
        "sid": ki,
        "session_sid": session,
        "type": "message",
        "data": orjson.dumps({"body": body}).decode(),
        "outcome": "relay",
        "origin": "inbound",
        "inbound_participant_sid": kp_from,
        "inbound_resource_sid": "SM" + ki[2:],
        "inbound_resource_status": "received",
        "inbound_resource_type": "Message",
        "outbound_participant_sid": kp_to,
        "outbound_resource_sid": "",
        "outbound_resource_status": "initiated",
        "outbound_resource_type": "Message",
        "created_ms": str(now_ms),
        "updated_ms": str(now_ms),
        "numbers": [CUSTOMER, PROXY, COURIER, PROXY],
        "inbound_identifier": CUSTOMER,
        "outbound_identifier": COURIER,
    }


def _updated(created: dict[str, Any], now_ms: int, **changes: str) -> dict[str, Any]:
    """The `interaction.updated` data InteractionStore.update emits: the whole hash after the change."""
    row = {
        k: v for k, v in created.items() if k not in ("numbers", "inbound_identifier", "outbound_identifier")
    }
    row.update(changes, updated_ms=str(now_ms))
    return {
        **row,
        "inbound_identifier": CUSTOMER,
        "outbound_identifier": COURIER,
        "numbers": [CUSTOMER, COURIER],
    }


async def test_interactions_of_a_forgotten_session_come_back_from_the_log(redis, pg):
    service, other = await add_service(pg), await add_service(pg)
    session, kp_customer, kp_courier = new_sid("KC"), new_sid("KP"), new_sid("KP")
    first, second, gone = new_sid("KI"), new_sid("KI"), new_sid("KI")

    created = _inbound(session, first, kp_from=kp_customer, kp_to=kp_courier, body="at the door", now_ms=T0)
    await emit_event(redis, service_sid=service, type="interaction.created", data=created, ts_ms=T0)
    later = _inbound(session, second, kp_from=kp_customer, kp_to=kp_courier, body="thanks", now_ms=T0 + 5000)
    await emit_event(redis, service_sid=service, type="interaction.created", data=later, ts_ms=T0 + 5000)
    # Status callbacks: sent then delivered, the second one written at the same millisecond.
    for status, sid in (("sent", "SMout1"), ("delivered", "SMout1")):
        await emit_event(
            redis,
            service_sid=service,
            type="interaction.updated",
            data=_updated(created, T0 + 1000, outbound_resource_status=status, outbound_resource_sid=sid),
            ts_ms=T0 + 1000,
        )
    deleted = _inbound(session, gone, kp_from=kp_courier, kp_to=kp_customer, body="x", now_ms=T0 + 9000)
    await emit_event(redis, service_sid=service, type="interaction.created", data=deleted, ts_ms=T0 + 9000)
    await emit_event(
        redis, service_sid=service, type="interaction.deleted", data={"sid": gone, "session_sid": session}
    )
    # The same session sid under another Service is another tenant's business.
    await emit_event(redis, service_sid=other, type="interaction.created", data=created, ts_ms=T0)
    await AuditWriter(redis, pg, consumer="w").drain_once()

    found = await interactions_from_audit(pg, service_sid=service, session_sid=session, limit=50)
    assert [ix["sid"] for ix in found] == [second, first]  # newest first, the deleted one left out
    ix = found[1]
    assert ix == {
        "sid": first,
        "session_sid": session,
        "service_sid": service,
        "data": '{"body":"at the door"}',
        "type": "message",
        "inbound_participant_sid": kp_customer,
        "inbound_resource_sid": "SM" + first[2:],
        "inbound_resource_status": "received",
        "inbound_resource_type": "Message",
        "outbound_participant_sid": kp_courier,
        "outbound_resource_sid": "SMout1",
        "outbound_resource_status": "delivered",
        "outbound_resource_type": "Message",
        "origin": "inbound",
        "created_ms": str(T0),
        "updated_ms": str(T0 + 1000),
        "date_created": "2030-03-17T17:46:40Z",
        "date_updated": "2030-03-17T17:46:41Z",
    }
    assert found[0]["outbound_resource_status"] == "initiated" and found[0]["outbound_resource_sid"] is None

    one = await interactions_from_audit(
        pg, service_sid=service, session_sid=session, interaction_sid=first, limit=50
    )
    assert [i["sid"] for i in one] == [first]
    page = await interactions_from_audit(pg, service_sid=service, session_sid=session, limit=1, offset=1)
    assert [i["sid"] for i in page] == [first]
    assert await interactions_from_audit(pg, service_sid=service, session_sid=new_sid("KC"), limit=50) == []

    # The message text is stored encrypted (erasable), not in clear.
    raw = await pg.fetch("SELECT data FROM audit_events WHERE service_sid = $1", service)
    assert not any("at the door" in r["data"] or CUSTOMER in r["data"] for r in raw)
    await erase_number(pg, CUSTOMER, actor="dpo")
    after = await interactions_from_audit(
        pg, service_sid=service, session_sid=session, interaction_sid=first, limit=1
    )
    assert after[0]["data"] == "[erased]" and after[0]["outbound_resource_status"] == "delivered"
