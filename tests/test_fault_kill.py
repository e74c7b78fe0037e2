"""kill -9 of `maskline serve` under load, then a restart: no text on record as relayed that was
not answered with relaying TwiML, no event lost, no session or pair leaked."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson
from _audit_fixtures import final_outcomes, paced
from relay_harness import COURIER, CUSTOMER, PROXY_A, PROXY_B, parse, sms_params
from signing import post_webhook

from audit.writer import AuditWriter
from core import keys
from relay.credentials import create_key

TEXTS_PER_S = 100
LOAD_S, KILL_AT_S, DOWN_S = 3.0, 1.0, 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_env(settings: Any, redis_url: str, **more: str) -> dict[str, str]:
    """The environment of a `maskline serve` of the test's own: its Redis, the test database and
    Twilio account, no embedded servers (`more`: other MASKLINE_* settings)."""
    return {
        **os.environ,
        "MASKLINE_REDIS_URL": redis_url,
        "MASKLINE_DATABASE_URL": settings.database_url,
        "MASKLINE_EMBEDDED": "never",
        "MASKLINE_TWILIO_ACCOUNT_SID": settings.twilio_account_sid,
        "MASKLINE_TWILIO_AUTH_TOKEN": settings.twilio_auth_token,
        "MASKLINE_TWILIO_API_URL": settings.twilio_api_url,
        **more,
    }


class Serve:
    """`maskline serve` in a process of its own, as an operator runs it."""

    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port = env, port
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; startup is polled below
            [sys.executable, "-m", "maskline", "serve", "--port", str(self.port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{self.port}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("maskline serve did not start")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(timeout=30)


async def test_kill_9_under_load_fakes_nothing_and_loses_nothing(settings, pg, private_redis) -> None:
    server, r = private_redis
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = serve_env(settings, server.url, MASKLINE_SWEEP_INTERVAL_S="0.2")
    serve = Serve(env, port)
    await serve.start()
    key_sid, secret = await create_key(pg, "kill test")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{key_sid}:{secret}".encode()).decode()}
    try:
        async with aiohttp.ClientSession() as http:

            async def api(path: str, data: Any) -> Any:
                async with http.post(base + path, data=data, headers=auth) as resp:
                    assert resp.status == 201, await resp.text()
                    return await resp.json()

            ks = (await api("/v1/Services", {"UniqueName": "kill-test"}))["sid"]
            for number in (PROXY_A, PROXY_B):
                await api(f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": number})
            form = [("Participants", orjson.dumps({"Identifier": n}).decode()) for n in (CUSTOMER, COURIER)]
            kc = (await api(f"/v1/Services/{ks}/Sessions", form))["sid"]
            async with http.get(f"{base}/v1/Services/{ks}/Sessions/{kc}/Participants", headers=auth) as resp:
                proxy = {p["identifier"]: p["proxy_identifier"] for p in (await resp.json())["participants"]}

            answers: dict[str, str] = {}  # MessageSid -> relay | fallback | none (no answer)

            async def text(i: int) -> None:
                sender = CUSTOMER if i % 2 else COURIER
                sid = "SM" + secrets.token_hex(16)
                params = sms_params(settings.twilio_account_sid, sender, proxy[sender], f"text {i}", sid=sid)
                try:
                    resp = await post_webhook(http, base + "/twilio/sms", params, settings.twilio_auth_token)
                    message = parse(await resp.text()).find("Message")
                    answers[sid] = "relay" if message is not None and message.get("to") else "fallback"
                except (aiohttp.ClientError, OSError):
                    answers[sid] = "none"

            async def crash() -> None:
                await asyncio.sleep(KILL_AT_S)
                serve.kill()
                await asyncio.sleep(DOWN_S)
                await serve.start()

            await asyncio.gather(paced(TEXTS_PER_S, int(TEXTS_PER_S * LOAD_S), text), crash())

            # The restarted worker's sweeper judges what the killed one left in flight.
            deadline = time.monotonic() + 20
            while await r.zcard(keys.inflight(ks)) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            assert await r.zcard(keys.inflight(ks)) == 0
        serve.kill(signal.SIGTERM)

        writer = AuditWriter(r, pg, consumer="kill-test", claim_idle_ms=0)
        while await writer.drain_once():
            pass
        final = await final_outcomes(pg, ks)

        print(f"\n{Counter(answers.values())} answers; audit {Counter(final.values())}")
        assert Counter(answers.values())["none"], "the kill should have cut some webhooks off"
        phantoms = [s for s, a in answers.items() if a != "relay" and final.get(s) == "relay"]
        assert phantoms == [], (
            f"{len(phantoms)} texts never answered with relaying TwiML are on record as relayed"
        )
        assert [s for s, a in answers.items() if a == "relay" and final.get(s) != "relay"] == []
        # No lost event: every interaction Redis recorded is in the audit log.
        recorded = [
            k async for k in r.scan_iter(match=f"ml:{{{ks}}}:ix:*".replace("{", "\\{").replace("}", "\\}"))
        ]
        sids = [await r.hget(k, "inbound_resource_sid") for k in recorded]
        assert [s for s in sids if s and s not in final] == []
        # No orphan session, no leaked pair.
        in_use = [int(await r.hget(keys.number(ks, n), "in_use") or 0) for n in (PROXY_A, PROXY_B)]
        assert sum(in_use) == 2
        assert await r.zcard(keys.sessions_by_created(ks)) == 1
    finally:
        if serve.process is not None and serve.process.poll() is None:
            serve.kill()
