"""`maskline status`: per Service, what an operator needs at a glance, from the live stores."""

from __future__ import annotations

from api_helpers import running_app
from cli_helpers import maskline

CUSTOMER, COURIER, OTHER = "+14155550101", "+14155550102", "+14155550103"


async def test_status_shows_numbers_sessions_pairs_cooling_and_lag(
    settings, redis, pg, database_url, redis_url
) -> None:
    async with running_app(settings, redis, pg) as api:
        _, service = await api.call("POST", "/v1/Services", {"UniqueName": "deliveries"})
        ks = service["sid"]
        for n in ("+14155550201", "+14155550202", "+14155550203"):
            await api.call("POST", f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": n})
        sessions = []
        for a, b in ((CUSTOMER, COURIER), (CUSTOMER, OTHER)):
            _, s = await api.call("POST", f"/v1/Services/{ks}/Sessions", {})
            for who in (a, b):
                await api.call(
                    "POST", f"/v1/Services/{ks}/Sessions/{s['sid']}/Participants", {"Identifier": who}
                )
            sessions.append(s["sid"])
        await api.call("POST", f"/v1/Services/{ks}/Sessions/{sessions[1]}", {"Status": "closed"})

    result = await maskline("status", database_url=database_url, redis_url=redis_url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "service",
        "sid",
        "numbers",
        "reserved",
        "live",
        "sessions",
        "pairs",
        "in",
        "use",
        "cooling",
        "audit",
        "lag",
    ]
    name, sid, numbers, reserved, live, in_use, cooling, lag = lines[1].split()
    assert (name, sid, numbers, reserved, live, in_use, cooling) == (
        "deliveries",
        ks,
        "3",
        "0",
        "1",
        "2",
        "2",
    )
    assert int(lag) > 0  # no audit writer ran: the events wait in the stream
    assert lines[2].startswith("busiest numbers of deliveries: +1415555020")
    assert "0101" not in result.stdout and "0102" not in result.stdout  # no participant's number

    missing = await maskline("status", "--service", "nope", database_url=database_url, redis_url=redis_url)
    assert missing.returncode == 1 and "no Service nope" in missing.stdout
