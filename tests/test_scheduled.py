"""Scheduled messages (SendAt on MessageInteractions; /ScheduledMessages): sent once at their time
through the fake Twilio, from the participant's proxy number; canceled with the session, the
participant or their STOP, and by DELETE; late ones expire; a claim whose sender died is never
sent twice; every step audited."""

from __future__ import annotations

import asyncio
import time

from relay_harness import COURIER, CUSTOMER, Relay, events_of, world

from relay.scheduler import Scheduler
from relay.state import RELAY, SCHEDULED


def _scheduler(relay: Relay) -> Scheduler:
    app = relay.runner.app  # type: ignore[union-attr]
    return Scheduler(app[RELAY], app[SCHEDULED])


async def _schedule(relay: Relay, ks: str, sess: dict, who: str, body: str, at: float) -> tuple[int, dict]:
    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{sess['participants'][who]}/MessageInteractions"
    return await relay.api("POST", path, {"Body": body, "SendAt": f"{at:.3f}"})


async def test_a_reminder_for_two_seconds_ahead_is_sent_once_at_its_time(relay: Relay) -> None:
    ks, sess = await world(relay)
    at = time.time() + 2
    status, scheduled = await _schedule(relay, ks, sess, CUSTOMER, "Your courier is 5 minutes away", at)
    assert status == 201 and scheduled["status"] == "scheduled" and scheduled["sid"].startswith("KM")
    assert relay.fake.messages == []

    stop = asyncio.Event()
    running = asyncio.create_task(_scheduler(relay).run(stop, interval_s=0.05))
    try:
        for _ in range(350):  # until it is sent, or 7 s
            if relay.fake.messages:
                break
            await asyncio.sleep(0.02)
        sent_at = time.time()
        await asyncio.sleep(0.5)  # a few more rounds: nothing is sent twice
    finally:
        stop.set()
        await running
    assert len(relay.fake.messages) == 1
    assert at - 0.05 <= sent_at <= at + 1.0, sent_at - at  # drift within a second
    sent = relay.fake.messages[0]
    assert sent["To"] == CUSTOMER and sent["From"] == sess["proxy"][CUSTOMER]
    assert sent["Body"] == "Your courier is 5 minutes away"

    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages/{scheduled['sid']}"
    status, done = await relay.api("GET", path)
    assert done["status"] == "sent" and done["interaction_sid"].startswith("KI")
    interactions = await relay.interactions(ks, sess["sid"])
    assert [i["sid"] for i in interactions] == [done["interaction_sid"]]
    # Twilio's answer is on the interaction (its Message sid and status) and in the log.
    assert interactions[0]["outbound_resource_sid"].startswith("SM")
    assert interactions[0]["outbound_resource_status"] == "queued"
    events = await events_of(relay.redis, ks)
    types = [t for t, _ in events]
    assert types.count("scheduled_message.created") == 1 and types.count("scheduled_message.sent") == 1
    updated = [d for t, d in events if t == "interaction.updated"]
    assert [(d["sid"], d["outbound_resource_status"]) for d in updated] == [
        (done["interaction_sid"], "queued")
    ]
    status, body = await relay.api("DELETE", path)
    assert status == 400 and body["code"] == 89004  # gone out already: cannot be canceled


async def test_closing_the_session_cancels_what_it_had_scheduled_and_nothing_is_sent(relay: Relay) -> None:
    ks, sess = await world(relay)
    status, later = await _schedule(relay, ks, sess, CUSTOMER, "tomorrow at 10", time.time() + 60)
    status, other = await _schedule(relay, ks, sess, COURIER, "pick-up reminder", time.time() + 60)
    assert status == 201
    status, _ = await relay.api("POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}", {"Status": "closed"})
    assert status == 200
    status, listed = await relay.api("GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages")
    assert {m["status"] for m in listed["scheduled_messages"]} == {"canceled"}
    assert {m["reason"] for m in listed["scheduled_messages"]} == {"session_api"}
    assert await _scheduler(relay).run_once() == 0 and relay.fake.messages == []
    canceled = [d for t, d in await events_of(relay.redis, ks) if t == "scheduled_message.canceled"]
    assert len(canceled) == 2


async def test_delete_stop_and_lateness_cancel_or_expire_and_bad_input_is_refused(relay: Relay) -> None:
    ks, sess = await world(relay)
    base = f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages"
    status, one = await _schedule(relay, ks, sess, CUSTOMER, "one", time.time() + 60)
    status, _ = await relay.api("DELETE", f"{base}/{one['sid']}")
    assert status == 204
    status, again = await relay.api("GET", f"{base}/{one['sid']}")
    assert again["status"] == "canceled" and again["reason"] == "api"

    # STOP from the participant cancels what was scheduled for them.
    status, two = await _schedule(relay, ks, sess, CUSTOMER, "two", time.time() + 60)
    await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "STOP")
    status, after = await relay.api("GET", f"{base}/{two['sid']}")
    assert after["status"] == "canceled" and after["reason"] == "opted_out"

    # Too late when its turn came (everything was down): expired, never sent.
    status, late = await _schedule(relay, ks, sess, COURIER, "late", time.time() + 1.5)
    await relay.update_service(ks, ScheduleLateness=0)
    await asyncio.sleep(1.6)
    await _scheduler(relay).run_once()
    status, gone = await relay.api("GET", f"{base}/{late['sid']}")
    assert gone["status"] == "expired" and relay.fake.messages == []

    path = f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants/{sess['participants'][COURIER]}/MessageInteractions"
    status, body = await relay.api("POST", path, {"Body": "x", "SendAt": "tomorrow"})
    assert status == 400 and body["code"] == 20422 and "SendAt" in body["message"]


async def test_a_claim_whose_sender_died_is_failed_never_sent_twice(relay: Relay) -> None:
    ks, sess = await world(relay)
    status, msg = await _schedule(relay, ks, sess, CUSTOMER, "once only", time.time() + 1.1)
    await asyncio.sleep(1.2)
    store = relay.runner.app[SCHEDULED]  # type: ignore[union-attr]
    claimed = await store.claim_due(ks, claim_ms=100)  # a sender that claims it, then dies
    assert [m["sid"] for m in claimed] == [msg["sid"]]
    await asyncio.sleep(0.2)
    assert await _scheduler(relay).run_once() == 0
    status, after = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages/{msg['sid']}"
    )
    assert after["status"] == "failed" and after["reason"] == "sender_died"
    assert relay.fake.messages == []


async def test_operators_list_and_cancel_from_the_command_line(relay: Relay) -> None:
    from cli_helpers import maskline

    ks, sess = await world(relay)
    status, _ = await relay.api("POST", f"/v1/Services/{ks}", {"UniqueName": "sched-cli"})
    status, msg = await _schedule(relay, ks, sess, CUSTOMER, "secret body", time.time() + 600)
    urls = {"redis_url": relay.settings.redis_url, "database_url": relay.settings.database_url}
    listed = await maskline("scheduled", "list", "--service", "sched-cli", **urls)
    assert listed.returncode == 0, listed.stderr
    assert msg["sid"] in listed.stdout and "scheduled" in listed.stdout
    assert "secret body" not in listed.stdout and CUSTOMER not in listed.stdout
    done = await maskline(
        "scheduled", "cancel", "--service", "sched-cli", "--session", sess["sid"], msg["sid"], **urls
    )
    assert done.returncode == 0, done.stderr
    status, after = await relay.api(
        "GET", f"/v1/Services/{ks}/Sessions/{sess['sid']}/ScheduledMessages/{msg['sid']}"
    )
    assert after["status"] == "canceled" and after["reason"] == "operator"
    again = await maskline(
        "scheduled", "cancel", "--service", "sched-cli", "--session", sess["sid"], msg["sid"], **urls
    )
    assert again.returncode == 1 and "89004" in again.stdout
