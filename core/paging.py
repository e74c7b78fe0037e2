"""List paging by position, as Twilio pages: a page ends with a `PageToken` naming the last item it
showed (its sort key and SID), and the next page starts strictly after that item. Unlike an offset,
a token still points at the right place after items were inserted or deleted between two reads: no
item is shown twice and none is skipped (an item inserted behind the reader is simply not shown).

Tokens look like Twilio's (`PA...` for the page after, `PB...` for the page before) and carry the
position itself, so a token whose item was deleted meanwhile still works. Every list orders by
(sort key, SID), the SID breaking ties; the sort key is an integer (creation time in ms or µs).
The stores (sessions/, pool/) read pages with `PageRequest`; the HTTP edge makes the URLs."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

import redis.asyncio as aioredis

from core.errors import InvalidParameter

__all__ = ["Cursor", "PageRequest", "Page", "DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "newest_first"]
__all__ += ["oldest_first_sql", "oldest_first_page", "page_of"]

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 50  # Twilio's
MAX_PAGE_SIZE: Final = 1000
_SID: Final = re.compile(r"[A-Za-z0-9]{1,64}")
_MAX_TOKEN: Final = 200


@dataclass(frozen=True)
class Cursor:
    """The position a page starts from: strictly after (or, `before`, strictly before) the item
    with this sort key and SID, in the list's own order."""

    key: int
    sid: str
    before: bool = False

    def token(self) -> str:
        body = base64.urlsafe_b64encode(f"{self.key}_{self.sid}".encode()).decode().rstrip("=")
        return ("PB" if self.before else "PA") + body

    @classmethod
    def parse(cls, token: str) -> Cursor:
        """The cursor of a token this service gave; InvalidParameter (20001) naming PageToken otherwise."""
        bad = InvalidParameter(
            f"PageToken {token[:40]!r} is not a token this list gave; read the list again from its first page"
        )
        if len(token) > _MAX_TOKEN or token[:2] not in ("PA", "PB"):
            raise bad
        body = token[2:]
        try:
            text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        except (binascii.Error, ValueError):
            raise bad from None
        key, sep, sid = text.partition("_")
        if not sep or not key.lstrip("-").isdigit() or len(key) > 20 or not _SID.fullmatch(sid):
            raise bad
        return cls(int(key), sid, before=token.startswith("PB"))


@dataclass(frozen=True)
class PageRequest:
    """One page of a list: `size` items from `cursor`, or (no cursor) from offset `page * size`
    (Twilio's `Page` on a first read). `page` is the page's number as shown in `meta.page`."""

    size: int = DEFAULT_PAGE_SIZE
    page: int = 0
    cursor: Cursor | None = None

    @property
    def offset(self) -> int:
        return 0 if self.cursor is not None else self.page * self.size


@dataclass(frozen=True)
class Page(Generic[T]):
    """Items of one page, in list order, and where the pages beside it start (None: no such page)."""

    items: list[T]
    next: Cursor | None = None
    previous: Cursor | None = None

    @classmethod
    def of(
        cls, items: list[T], positions: Sequence[tuple[int, str]], request: PageRequest, more: bool
    ) -> Page[T]:
        """`positions[i]` is the (sort key, SID) of `items[i]`; `more`: the list goes on past this
        page in the direction it was read."""
        if not positions:
            return cls(items)
        first, last = positions[0], positions[-1]
        after, before = Cursor(*last), Cursor(*first, before=True)
        if request.cursor is not None and request.cursor.before:
            return cls(items, next=after, previous=before if more else None)
        started_later = request.cursor is not None or request.page > 0
        return cls(items, next=after if more else None, previous=before if started_later else None)


def page_of(
    items: list[T], position: Callable[[T], tuple[int, str]], request: PageRequest, *, newest_first: bool
) -> Page[T]:
    """One page of a list held whole in memory, already in list order (a session's participants,
    a closed session's interactions read back from the audit log)."""
    cursor = request.cursor
    if cursor is None:
        chosen = items[request.offset : request.offset + request.size + 1]
    else:
        mark = (cursor.key, cursor.sid)
        # Past the cursor in list order: lower positions in a newest-first list, higher otherwise.
        later = [it for it in items if (position(it) < mark) == newest_first and position(it) != mark]
        earlier = [it for it in items if (position(it) > mark) == newest_first and position(it) != mark]
        chosen = earlier[-(request.size + 1) :][::-1] if cursor.before else later[: request.size + 1]
    more = len(chosen) > request.size
    chosen = chosen[: request.size]
    if cursor is not None and cursor.before:
        chosen.reverse()
    return Page.of(chosen, [position(it) for it in chosen], request, more)


async def newest_first(
    redis: aioredis.Redis, index: str, request: PageRequest
) -> tuple[list[tuple[int, str]], bool]:
    """One page of a sorted set read newest first (highest score, then highest member): the
    (score, member) of each item and whether the set goes on in the direction read. Scores are
    integers (ms)."""
    want = request.size + 1
    cursor = request.cursor
    if cursor is None:
        raw = await redis.zrange(index, request.offset, request.offset + want - 1, desc=True, withscores=True)
        found = _positions(raw)
    else:
        found = await _scan(redis, index, cursor, want)
    more = len(found) > request.size
    found = found[: request.size]
    if cursor is not None and cursor.before:
        found.reverse()  # read oldest first from the cursor; shown newest first
    return found, more


async def _scan(redis: aioredis.Redis, index: str, cursor: Cursor, want: int) -> list[tuple[int, str]]:
    """Up to `want` members past the cursor: from its score down (a page after) or up (a page
    before), skipping members of the same score on the cursor's own side of it."""
    mark = (cursor.key, cursor.sid)
    found: list[tuple[int, str]] = []
    offset, batch = 0, want + 16
    while len(found) < want:
        if cursor.before:
            raw = await redis.zrange(
                index, cursor.key, "+inf", byscore=True, offset=offset, num=batch, withscores=True
            )
            found += [at for at in _positions(raw) if at > mark]
        else:
            raw = await redis.zrange(
                index, cursor.key, "-inf", byscore=True, desc=True, offset=offset, num=batch, withscores=True
            )
            found += [at for at in _positions(raw) if at < mark]
        if len(raw) < batch:
            break
        offset += len(raw)
    return found[:want]


def _positions(raw: Any) -> list[tuple[int, str]]:
    """(score, member) of ZRANGE ... WITHSCORES replies."""
    return [(int(score), m.decode() if isinstance(m, bytes) else m) for m, score in raw]


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND: Final = dt.timedelta(microseconds=1)


def oldest_first_sql(select: str, args: list[Any], request: PageRequest) -> tuple[str, list[Any]]:
    """`select` (a query over a table with `date_created` and `sid`, ending in a WHERE clause)
    completed to read one page oldest first; hand the rows to `oldest_first_page`."""
    n, want = len(args), request.size + 1
    cursor = request.cursor
    if cursor is None:
        sql = f"{select} ORDER BY date_created, sid OFFSET ${n + 1} LIMIT ${n + 2}"
        return sql, [*args, request.offset, want]
    op, order = ("<", "DESC") if cursor.before else (">", "ASC")
    sql = (
        f"{select} AND (date_created, sid) {op} (${n + 1}, ${n + 2})"
        f" ORDER BY date_created {order}, sid {order} LIMIT ${n + 3}"
    )
    return sql, [*args, _EPOCH + cursor.key * _MICROSECOND, cursor.sid, want]


def oldest_first_page(rows: list[dict[str, Any]], request: PageRequest) -> Page[dict[str, Any]]:
    """The page of the rows `oldest_first_sql`'s query returned."""
    more = len(rows) > request.size
    rows = rows[: request.size]
    if request.cursor is not None and request.cursor.before:
        rows.reverse()
    positions = [((r["date_created"] - _EPOCH) // _MICROSECOND, r["sid"]) for r in rows]
    return Page.of(rows, positions, request, more)
