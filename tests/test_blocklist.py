"""A Service's block list (/v1/Services/{KS}/Blocked, `maskline block`): a blocked number is refused
at create (89003, nothing created) and on inbound (out of session, audited as blocked_sender,
never relayed, never sent to the Service's out-of-session endpoint); unblocking restores both;
Redis losing the list gets it back from Postgres; erasing the number takes it off every list."""

from __future__ import annotations

import orjson
from cli_helpers import maskline
from relay_harness import COURIER, CUSTOMER, HOST, PROXY_A, PROXY_B, Relay, events_of, message_of

from core import keys


async def test_a_blocked_number_cannot_join_nor_reach_anyone_until_unblocked(relay: Relay) -> None:
    ks = await relay.service()
    await relay.numbers(ks, PROXY_A, PROXY_B)
    sess = await relay.session(ks, CUSTOMER, COURIER)
    base = f"/v1/Services/{ks}/Blocked"

    status, entry = await relay.api("POST", base, {"Identifier": CUSTOMER})
    assert status == 201 and entry["identifier"] == CUSTOMER and entry["sid"].startswith("BL")
    assert entry["url"].endswith(f"{base}/{entry['sid']}")
    status, again = await relay.api("POST", base, {"Identifier": CUSTOMER})  # idempotent
    assert status == 201 and again["sid"] == entry["sid"]

    # At create: refused with its code, and nothing was created.
    form = [("Participants", orjson.dumps({"Identifier": i}).decode()) for i in (CUSTOMER, HOST)]
    status, body = await relay.api("POST", f"/v1/Services/{ks}/Sessions", form)
    assert status == 400 and body["code"] == 89003 and "blocked" in body["message"]
    status, listed = await relay.api("GET", f"/v1/Services/{ks}/Sessions")
    assert [s["sid"] for s in listed["sessions"]] == [sess["sid"]]
    status, body = await relay.api(
        "POST", f"/v1/Services/{ks}/Sessions/{sess['sid']}/Participants", {"Identifier": CUSTOMER}
    )
    assert status == 400 and body["code"] in (89003, 80103)

    # On inbound: treated as out of session, audited, never relayed to the courier.
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "let me through")
    msg = message_of(xml)
    assert status == 200 and (msg is None or msg.get("to") in (None, CUSTOMER))
    records = [d for t, d in await events_of(relay.redis, ks) if t == "interaction.created"]
    assert records[-1]["outcome"] == "blocked_sender"
    # The courier can still text the customer (the block is on what the customer sends).
    status, xml = await relay.sms(COURIER, sess["proxy"][COURIER], "hello?")
    assert message_of(xml).get("to") == CUSTOMER  # type: ignore[union-attr]

    # Listed, fetched by identifier, removed; then it relays again.
    status, page = await relay.api("GET", base)
    assert [b["identifier"] for b in page["blocked"]] == [CUSTOMER]
    status, one = await relay.api("GET", f"{base}/%2B{CUSTOMER[1:]}")
    assert status == 200 and one["sid"] == entry["sid"]
    status, _ = await relay.api("DELETE", f"{base}/{entry['sid']}")
    assert status == 204
    status, _ = await relay.api("GET", f"{base}/{entry['sid']}")
    assert status == 404
    status, xml = await relay.sms(CUSTOMER, sess["proxy"][CUSTOMER], "through now")
    assert message_of(xml).get("to") == COURIER  # type: ignore[union-attr]
    types = [t for t, _ in await events_of(relay.redis, ks)]
    assert "identifier.blocked" in types and "identifier.unblocked" in types


async def test_bad_input_is_refused_and_the_list_survives_redis_losing_it(relay: Relay) -> None:
    ks = await relay.service()
    base = f"/v1/Services/{ks}/Blocked"
    status, body = await relay.api("POST", base, {})
    assert status == 400 and body["code"] == 20422 and "Identifier" in body["message"]
    status, body = await relay.api("POST", base, {"Identifier": "not a number"})
    assert status == 400 and body["code"] == 20422
    status, body = await relay.api(
        "POST", "/v1/Services/KS" + "0" * 32 + "/Blocked", {"Identifier": CUSTOMER}
    )
    assert status == 404
    status, _ = await relay.api("POST", base, {"Identifier": CUSTOMER})
    assert status == 201

    # Redis loses the set: publishing the Service (start-up, recovery) brings it back.
    await relay.redis.delete(keys.blocked(ks))
    from relay.state import SERVICES

    services = relay.runner.app[SERVICES]  # type: ignore[union-attr]
    await services.publish(await services.get(ks))
    assert await relay.redis.sismember(keys.blocked(ks), CUSTOMER)


async def test_the_block_command_adds_lists_and_removes(relay: Relay) -> None:
    ks = await relay.service(UniqueName="blocking")
    urls = {"redis_url": relay.settings.redis_url, "database_url": relay.settings.database_url}
    done = await maskline("block", "add", "--service", "blocking", CUSTOMER, COURIER, **urls)
    assert done.returncode == 0, done.stderr
    listed = await maskline("block", "list", "--service", "blocking", **urls)
    assert CUSTOMER in listed.stdout and COURIER in listed.stdout
    assert await relay.redis.sismember(keys.blocked(ks), COURIER)
    done = await maskline("block", "remove", "--service", "blocking", COURIER, **urls)
    assert done.returncode == 0, done.stderr
    assert not await relay.redis.sismember(keys.blocked(ks), COURIER)
    bad = await maskline("block", "add", "--service", "blocking", "nope", **urls)
    assert bad.returncode == 1 and "20422" in bad.stdout
