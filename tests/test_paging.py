"""Lists page by PageToken (core/paging.py), as Twilio's do: reading on while the list changes shows
no item twice and skips none that stayed, and the previous page is the page before."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from api_helpers import RunningApp, running_app

from core.errors import InvalidParameter
from core.paging import Cursor, PageRequest, newest_first


@pytest.fixture
async def api(settings, redis, pg):
    async with running_app(settings, redis, pg) as running:
        yield running


def test_a_token_carries_its_position_and_a_foreign_token_is_refused() -> None:
    for cursor in (Cursor(1_900_000_000_123, "KC" + "ab" * 16), Cursor(7, "KSx", before=True)):
        token = cursor.token()
        assert token[:2] == ("PB" if cursor.before else "PA")
        assert Cursor.parse(token) == cursor
    for bad in ("PAnot base64!", "XX" + Cursor(1, "KS1").token()[2:], "PA", "PA" + "A" * 300):
        with pytest.raises(InvalidParameter, match="PageToken"):
            Cursor.parse(bad)


async def _read_all(api: RunningApp, path: str, key: str, *, between: Any = None) -> list[str]:
    """Every SID of a list, page by page through meta.next_page_url; `between(n)` runs after page n."""
    seen: list[str] = []
    url: str | None = f"{path}?PageSize=3"
    n = 0
    while url:
        status, body = await api.call("GET", url)
        assert status == 200, body
        seen += [item["sid"] for item in body[key]]
        assert body["meta"]["page"] == n and body["meta"]["key"] == key
        next_url = body["meta"]["next_page_url"]
        url = None if next_url is None else next_url.removeprefix(api.base)
        if next_url:
            assert urlsplit(next_url).scheme == "http" and "PageToken=PA" in next_url
        if between is not None:
            await between(n)
        n += 1
    return seen


async def _create(api: RunningApp, path: str, data: dict[str, str]) -> str:
    status, body = await api.call("POST", path, data)
    assert status == 201, body
    sid: str = body["sid"]
    return sid


async def test_services_and_numbers_page_stably_while_items_come_and_go(api: RunningApp) -> None:
    services = [await _create(api, "/v1/Services", {"UniqueName": f"svc-{i}"}) for i in range(8)]
    added: list[str] = []

    async def churn(page: int) -> None:
        if page == 0:  # one unseen is deleted, two are added at the end, one seen is deleted
            assert (await api.call("DELETE", f"/v1/Services/{services[5]}"))[0] == 204
            assert (await api.call("DELETE", f"/v1/Services/{services[0]}"))[0] == 204
            added.extend([await _create(api, "/v1/Services", {"UniqueName": f"late-{i}"}) for i in range(2)])

    seen = await _read_all(api, "/v1/Services", "services", between=churn)
    assert len(seen) == len(set(seen)), "an item was shown twice"
    assert seen == services[:3] + services[3:5] + services[6:] + added  # oldest first, none skipped

    ks = services[1]
    numbers = [
        await _create(api, f"/v1/Services/{ks}/PhoneNumbers", {"PhoneNumber": f"+1415555{i:04d}"})
        for i in range(7)
    ]

    async def churn_numbers(page: int) -> None:
        if page == 0:
            assert (await api.call("DELETE", f"/v1/Services/{ks}/PhoneNumbers/{numbers[1]}"))[0] == 204
            assert (await api.call("DELETE", f"/v1/Services/{ks}/PhoneNumbers/{numbers[4]}"))[0] == 204

    seen = await _read_all(api, f"/v1/Services/{ks}/PhoneNumbers", "phone_numbers", between=churn_numbers)
    assert seen == numbers[:4] + numbers[5:]


async def test_sessions_page_newest_first_and_back_while_sessions_are_created(api: RunningApp) -> None:
    ks = await _create(api, "/v1/Services", {"UniqueName": "rides"})
    # One clock tick for all: every session has the same creation time, the SID breaks the tie.
    sessions = [await _create(api, f"/v1/Services/{ks}/Sessions", {"UniqueName": f"s{i}"}) for i in range(8)]

    late: list[str] = []

    async def churn(page: int) -> None:
        if page == 0:  # same ms: lands before or after the reader by its SID; then a newer one
            late.append(await _create(api, f"/v1/Services/{ks}/Sessions", {"UniqueName": "same-ms"}))
            api.clock.advance(5)
            late.append(await _create(api, f"/v1/Services/{ks}/Sessions", {"UniqueName": "newest"}))

    seen = await _read_all(api, f"/v1/Services/{ks}/Sessions", "sessions", between=churn)
    assert len(seen) == len(set(seen)), "a session was shown twice"
    assert set(sessions) <= set(seen), "a session was skipped"
    assert set(seen) - set(sessions) <= {late[0]}  # the newest is behind the reader: not shown

    # previous_page_url of page 1 gives page 0 again; its next_page_url gives page 1 again.
    _, first = await api.call("GET", f"/v1/Services/{ks}/Sessions?PageSize=3")
    _, second = await api.call("GET", first["meta"]["next_page_url"].removeprefix(api.base))
    assert second["meta"]["previous_page_url"] and "PageToken=PB" in second["meta"]["previous_page_url"]
    _, back = await api.call("GET", second["meta"]["previous_page_url"].removeprefix(api.base))
    assert [s["sid"] for s in back["sessions"]] == [s["sid"] for s in first["sessions"]]
    _, again = await api.call("GET", back["meta"]["next_page_url"].removeprefix(api.base))
    assert [s["sid"] for s in again["sessions"]] == [s["sid"] for s in second["sessions"]]


async def test_a_bad_page_token_is_a_400_naming_it(api: RunningApp) -> None:
    ks = await _create(api, "/v1/Services", {"UniqueName": "x"})
    status, body = await api.call("GET", f"/v1/Services/{ks}/Sessions?PageToken=PA%21%21")
    assert (status, body["code"]) == (400, 20422) and "PageToken" in body["message"]


async def test_sorted_set_pages_break_ties_by_member_under_inserts_and_deletes(redis) -> None:
    index = "ml:test:paging"
    members = [f"KI{i:032x}" for i in range(20)]
    await redis.zadd(index, {m: 1000 + i // 7 for i, m in enumerate(members)})  # 7 share each ms
    request = PageRequest(size=4)
    seen: list[str] = []
    while True:
        positions, more = await newest_first(redis, index, request)
        seen += [sid for _, sid in positions]
        if len(seen) == 4:
            await redis.zadd(
                index, {"KI" + "f" * 32: 5000, "KI" + "e" * 32: 1002}
            )  # before the cursor: not shown
            await redis.zrem(index, members[0], seen[1])  # one unseen, one seen
        if not more:
            break
        request = PageRequest(size=4, cursor=Cursor(*positions[-1]))
    expected = sorted(((1000 + i // 7, m) for i, m in enumerate(members)), reverse=True)
    assert seen == [m for _, m in expected if m != members[0]]
