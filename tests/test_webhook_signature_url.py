"""Webhook signatures behind a proxy or tunnel: a refusal's log line names the URL that was checked
and the public URL setting; MASKLINE_TRUST_FORWARDED=1 checks against X-Forwarded-Proto/-Host."""

from __future__ import annotations

import dataclasses
import logging

import pytest
from relay_harness import COURIER, CUSTOMER, Relay, message_of, sms_params, world
from signing import sign

from core.settings import Settings

TUNNEL = "https://tunnel.example"


async def _forwarded_sms(relay: Relay, headers: dict[str, str]) -> tuple[int, str]:
    """An SMS Twilio sent to the tunnel, arriving at the app through a proxy that adds `headers`."""
    ks, sess = await world(relay)
    params = sms_params(relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][COURIER], "hi")
    assert relay.http is not None
    signature = sign(TUNNEL + "/twilio/sms", params, relay.settings.twilio_auth_token)
    async with relay.http.post(
        relay.local + "/twilio/sms", data=params, headers={"X-Twilio-Signature": signature, **headers}
    ) as resp:
        return resp.status, await resp.text()


@pytest.fixture
async def trusting(settings, redis, pg, fake_twilio):  # type: ignore[no-untyped-def]
    r = await Relay(dataclasses.replace(settings, trust_forwarded=True), redis, pg, fake_twilio).start()
    try:
        yield r
    finally:
        await r.stop()


async def test_a_refusal_names_the_url_checked_and_the_public_url_setting(relay: Relay, caplog) -> None:
    ks, sess = await world(relay)
    params = sms_params(relay.settings.twilio_account_sid, CUSTOMER, sess["proxy"][COURIER], "hi")
    with caplog.at_level(logging.WARNING, logger="maskline.webhooks"):
        status, _ = await relay.post("/twilio/sms", params, signed_url=TUNNEL + "/twilio/sms")
    assert status == 403
    line = next(r.getMessage() for r in caplog.records if "refused" in r.getMessage())
    assert f"for URL {relay.settings.public_url}/twilio/sms" in line
    assert f"MASKLINE_PUBLIC_URL={relay.settings.public_url}" in line and "MASKLINE_TRUST_FORWARDED" in line
    assert "not trusted" in line


async def test_trusted_forwarded_headers_are_what_the_signature_is_checked_against(trusting: Relay) -> None:
    status, xml = await _forwarded_sms(
        trusting, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tunnel.example"}
    )
    assert status == 200
    message = message_of(xml)
    assert message is not None and message.text == "hi"


async def test_forwarded_headers_are_ignored_unless_trusted(relay: Relay) -> None:
    status, _ = await _forwarded_sms(
        relay, {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tunnel.example"}
    )
    assert status == 403


async def test_malformed_forwarded_headers_fall_back_to_the_public_url(trusting: Relay, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="maskline.webhooks"):
        status, _ = await _forwarded_sms(
            trusting, {"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "tunnel.example"}
        )
    assert status == 403
    assert any("absent or not well formed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("raw", "value"), [("1", True), ("true", True), ("Yes", True), ("on", True), ("0", False), ("off", False)]
)
def test_maskline_trust_forwarded_reads_yes_and_no(raw: str, value: bool) -> None:
    assert Settings.from_env({"MASKLINE_TRUST_FORWARDED": raw}).trust_forwarded is value


def test_a_bad_maskline_trust_forwarded_names_the_variable() -> None:
    with pytest.raises(ValueError, match="MASKLINE_TRUST_FORWARDED"):
        Settings.from_env({"MASKLINE_TRUST_FORWARDED": "maybe"})


def test_the_fast_signature_is_twilios_for_any_form() -> None:
    import random

    from multidict import MultiDict
    from twilio.request_validator import RequestValidator

    from relay.webhooks.boundary import sha1_signature

    rng = random.Random(7)
    alphabet = ["a", "B", "1", " ", "+", "&", "=", "é", "☃", "%", ""]
    validator = RequestValidator("auth-token-" + "x" * 20)
    for _ in range(300):
        form: MultiDict[str] = MultiDict()
        for _ in range(rng.randrange(0, 12)):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 6)))
            form.add(name, "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8))))
            if rng.random() < 0.2:  # repeated names (MediaUrl0...), repeated values too
                form.add(name, rng.choice(["", "v", form.getone(name)]))
        url = "https://relay.example/twilio/sms?x=" + rng.choice(alphabet)
        assert sha1_signature(validator.token, url, form) == validator.compute_signature(url, form)
