"""`maskline dev`: the sandbox. Maskline on the embedded default plus a simulated Twilio
(maskline/sandbox/) that its outbound REST calls go to and that posts signed webhooks to it;
a demo Service with proxy numbers, two phones in a session, an API key; no Twilio account and
no network. `maskline serve` stays the production command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp import web

from core.settings import DEV_AUTH_TOKEN, Settings
from maskline.sandbox.simulator import REAL_TWILIO_HOSTS, Simulator
from maskline.sandbox.web import simulator_app

__all__ = ["add_arguments", "run_dev", "Sandbox", "DEMO_NUMBERS", "DEMO_PHONES"]

DEMO_NUMBERS: Final = ("+14155550201", "+14155550202", "+14155550203")
DEMO_PHONES: Final = ("+14155550101", "+14155550102")  # a customer and a courier
DEMO_ACCOUNT_SID: Final = "AC" + "5a" * 16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, help="Maskline's port (default MASKLINE_PORT or 8080)")
    parser.add_argument(
        "--phones-port", type=int, help="the simulated Twilio's port (default: Maskline's + 1)"
    )
    parser.add_argument("--no-seed", action="store_true", help="no demo Service, numbers, phones or session")


def refusal(environ: dict[str, str]) -> str | None:
    """Why the sandbox must not start (it would send its fake traffic's credentials elsewhere)."""
    api = environ.get("MASKLINE_TWILIO_API_URL", "")
    host = (urlsplit(api).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in REAL_TWILIO_HOSTS):
        return (
            f"MASKLINE_TWILIO_API_URL points at the real Twilio ({api}); the sandbox plays Twilio "
            "itself: unset it (maskline serve talks to Twilio)"
        )
    return None


@dataclass
class Sandbox:
    """Maskline and the simulated Twilio, both started; `stop()` undoes it."""

    settings: Settings
    simulator: Simulator
    phones_url: str
    api_key: tuple[str, str] | None = None
    service_sid: str | None = None
    proxies: dict[str, str] = dataclasses.field(default_factory=dict)  # demo phone -> its proxy number
    runners: tuple[web.AppRunner, ...] = ()

    @classmethod
    async def start(
        cls, settings: Settings, *, phones_port: int, seed: bool = True, **app_options: Any
    ) -> Sandbox:
        from maskline.migrate import apply_migrations
        from maskline.server import create_app

        host = settings.host
        phones_url = f"http://{host}:{phones_port}"
        settings = dataclasses.replace(
            settings,
            public_url=f"http://{host}:{settings.port}",
            twilio_api_url=phones_url,
            twilio_account_sid=DEMO_ACCOUNT_SID,
            twilio_auth_token=DEV_AUTH_TOKEN,
        )
        await apply_migrations(settings.database_url)
        simulator = Simulator(DEMO_ACCOUNT_SID, DEV_AUTH_TOKEN, maskline_url=settings.public_url)
        runners = []
        for app, port in (
            (create_app(settings, **app_options), settings.port),
            (simulator_app(simulator), phones_port),
        ):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            runners.append(runner)
        sandbox = cls(settings, simulator, phones_url, runners=tuple(runners))
        if seed:
            await sandbox.seed()
        return sandbox

    async def seed(self) -> None:
        """An API key, a demo Service with DEMO_NUMBERS, DEMO_PHONES in a session (made through
        the REST API, as a marketplace backend would)."""
        from relay.credentials import create_key
        from relay.state import PG

        # Both permissions: the sandbox's one key drives the API and reads the audit log.
        self.api_key = await create_key(
            self.runners[0].app[PG], "sandbox", permissions=frozenset({"proxy", "audit"})
        )
        auth = {"Authorization": aiohttp.encode_basic_auth(*self.api_key)}
        base = self.settings.public_url
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(f"{base}/v1/Services", data={"UniqueName": "sandbox-demo"}) as r:
                service = await r.json()
                if r.status != 201:  # already seeded in this data directory
                    async with http.get(f"{base}/v1/Services/sandbox-demo") as got:
                        service = await got.json()
            self.service_sid = service["sid"]
            for number in DEMO_NUMBERS:
                async with http.post(
                    f"{base}/v1/Services/{self.service_sid}/PhoneNumbers", data={"PhoneNumber": number}
                ):
                    pass  # 201, or already in the pool
            form = [("UniqueName", "demo-delivery")] + [
                ("Participants", orjson.dumps({"Identifier": p, "FriendlyName": name}).decode())
                for p, name in zip(DEMO_PHONES, ("customer", "courier"), strict=True)
            ]
            sessions = f"{base}/v1/Services/{self.service_sid}/Sessions"
            async with http.post(sessions, data=form):
                pass  # 201, or the session of an earlier run
            async with http.get(f"{sessions}/demo-delivery/Participants") as r:
                parts = (await r.json()).get("participants", [])
            self.proxies = {p["identifier"]: p["proxy_identifier"] for p in parts}
        for phone in DEMO_PHONES:
            self.simulator.add_phone(phone)

    async def stop(self) -> None:
        for runner in reversed(self.runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()


async def run_dev(args: argparse.Namespace, settings: Settings) -> int:
    why = refusal(dict(os.environ))
    if why:
        print(f"maskline dev: {why}", flush=True)
        return 2
    settings = dataclasses.replace(settings, port=args.port or settings.port)
    sandbox = await Sandbox.start(
        settings, phones_port=args.phones_port or settings.port + 1, seed=not args.no_seed, audit_writer=True
    )
    try:
        print(f"Maskline sandbox on {sandbox.settings.public_url} (simulated Twilio: {sandbox.phones_url})")
        print(f"  phones:   {sandbox.phones_url}/phones")
        print(f"  console:  {sandbox.settings.public_url}/console (sign in with the API key below)")
        if sandbox.api_key:
            sid, secret = sandbox.api_key
            print(f"  API key:  {sid}:{secret}")
            print(f"  Service:  {sandbox.service_sid} (proxy numbers {', '.join(DEMO_NUMBERS)})")
            for phone, proxy in sandbox.proxies.items():
                print(f"  session demo-delivery: phone {phone} texts or calls {proxy}")
            print(f"  API:      curl -u {sid}:{secret} {sandbox.settings.public_url}/v1/Services")
        print("Ctrl-C stops it.", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await sandbox.stop()
    return 0
