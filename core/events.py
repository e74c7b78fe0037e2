"""Emitting audit events: the one way every part of Maskline puts an event on its Redis stream.

An event is a stream entry with the fields `id`, `type`, `service_sid`, `ts_ms` and `data` (JSON),
see docs/design.md ("Events"). The audit writer (audit/writer.py) drains every stream listed in
`ml:event-streams` into Postgres."""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from core import keys
from core.ids import new_event_id

__all__ = ["emit_event", "stream_key"]


def stream_key(service_sid: str | None) -> str:
    """`ml:{KS...}:events`, or `ml:{global}:events` for events that belong to no Service."""
    return keys.events(service_sid)


async def emit_event(
    redis: aioredis.Redis,
    *,
    service_sid: str | None,
    type: str,
    data: dict[str, Any],
    ts_ms: int | None = None,
    event_id: str | None = None,
) -> str:
    """Append an event to its stream and return its id ("EV" + 32 hex; a fresh one unless given:
    the audit log stores each id once, so a given id makes a repeated emit harmless).

    Real phone numbers the event concerns should also be listed in `data["numbers"]`, so the
    writer can index and erase them (design.md, "Events")."""
    event_id = event_id or new_event_id()
    key = stream_key(service_sid)
    fields = {
        "id": event_id,
        "type": type,
        "service_sid": service_sid or "",
        "ts_ms": str(ts_ms if ts_ms is not None else time.time_ns() // 1_000_000),
        "data": orjson.dumps(data),
    }
    # One round trip, two slots (so no MULTI, which Redis Cluster refuses across slots). SADD goes
    # first: once the entry exists its stream is registered, so the writer cannot miss it.
    pipe = redis.pipeline(transaction=False)
    pipe.sadd(keys.EVENT_STREAMS, key)
    pipe.xadd(key, fields)  # type: ignore[arg-type]
    await pipe.execute()
    return event_id
