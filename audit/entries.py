"""Events stream entries as the audit writer reads them: parsed into Events, gathered in Batches.

An entry is a Redis stream entry of an events stream (fields `id`, `type`, `service_sid`, `ts_ms`,
`data`; see docs/design.md, "Events"). One that cannot be read as an event is kept aside for the
writer's dead letters, never dropped; one deleted while pending is only acknowledged.

Hot path: `Batch.add_resp2` takes the raw RESP2 reply of the writer's lean connection
(core/resp.py) and builds the Event tuples with as few conversions as possible; see docs/audit.md
("Throughput")."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from audit.chain import Event

__all__ = ["Batch", "Entry", "as_text", "entries_in", "parse_entry", "raw_fields"]


@dataclass(frozen=True)
class Entry:
    stream: str
    entry_id: str
    event: Event | None  # None: malformed, goes to the writer's DEAD_LETTERS
    raw: dict[str, str]


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entry(stream: str, entry_id: str, fields: dict[Any, Any]) -> Entry:
    raw = {
        k if k.__class__ is str else as_text(k): v if v.__class__ is str else as_text(v)
        for k, v in fields.items()
    }
    try:
        data = orjson.loads(raw.get("data", "{}"))
        if not isinstance(data, dict) or not raw.get("type"):
            raise ValueError("data must be a JSON object and type must be set")
        event_id = raw.get("id") or _derived_id(stream, entry_id)
        event = Event(
            id=event_id,
            type=raw["type"],
            service_sid=raw.get("service_sid") or None,
            ts_ms=int(raw["ts_ms"]),
            data=data,
        )
    except (ValueError, KeyError, orjson.JSONDecodeError):
        return Entry(stream, entry_id, None, raw)
    return Entry(stream, entry_id, event, raw)


class Batch:
    """Stream entries read together: the events to store, what to acknowledge afterwards (every
    entry, stored, skipped or set aside), and the malformed entries (to the writer's DEAD_LETTERS)."""

    __slots__ = ("events", "acks", "dead", "size", "redelivered")

    def __init__(self, *, redelivered: bool = False) -> None:
        # redelivered: read again (own pending entries, claimed ones), so possibly stored already.
        self.redelivered = redelivered
        self.events: list[Event] = []
        self.acks: dict[str, list[str]] = {}  # stream -> entry ids
        self.dead: list[tuple[str, str, dict[str, str]]] = []  # (stream, entry id, raw fields)
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, stream: str, entry_id: str, raw: dict[str, str] | None) -> None:
        """One entry; `raw` its fields as text (None or empty: deleted while pending, only acknowledged)."""
        ids = self.acks.get(stream)
        if ids is None:
            ids = self.acks[stream] = []
        ids.append(entry_id)
        self.size += 1
        if raw:
            event = _event(stream, entry_id, raw)
            if event is None:
                self.dead.append((stream, entry_id, raw))
            else:
                self.events.append(event)

    def add_resp2(self, reply: Any) -> None:
        """An XREADGROUP reply as RESP2 sends it: [[stream, [[id, [field, value, ...] or nil]...]]...]."""
        if not reply:
            return
        new_event, loads, derived = tuple.__new__, orjson.loads, _derived_id
        events, dead = self.events, self.dead
        for stream, messages in reply:
            ids = self.acks.get(stream)
            if ids is None:
                ids = self.acks[stream] = []
            self.size += len(messages)
            for entry_id, fields in messages:
                ids.append(entry_id)
                if not fields:
                    continue  # deleted from the stream while pending: only to acknowledge
                it = iter(fields)
                raw = dict(zip(it, it, strict=False))
                # Inline _event (the hot path); anything unusual falls back to it.
                try:
                    data = loads(raw["data"])
                    type_ = raw["type"]
                    if data.__class__ is not dict or not type_:
                        raise ValueError
                    events.append(
                        new_event(
                            Event,
                            (
                                raw.get("id") or derived(stream, entry_id),
                                type_,
                                raw.get("service_sid") or None,
                                int(raw["ts_ms"]),
                                data,
                            ),
                        )
                    )
                except (ValueError, KeyError, TypeError):
                    event = _event(stream, entry_id, raw)
                    if event is None:
                        dead.append((stream, entry_id, raw))
                    else:
                        events.append(event)


def _event(stream: str, entry_id: str, raw: dict[str, str]) -> Event | None:
    entry = parse_entry(stream, entry_id, raw)
    return entry.event


def _derived_id(stream: str, entry_id: str) -> str:
    # An entry without an id still needs one that is the same on every delivery (idempotency).
    return "EV" + hashlib.sha256(f"{stream}/{entry_id}".encode()).hexdigest()[:32]


def raw_fields(fields: Any) -> dict[str, str]:
    return {
        k if k.__class__ is str else as_text(k): v if v.__class__ is str else as_text(v)
        for k, v in fields.items()
    }


def entries_in(reply: Any) -> Iterable[Entry]:
    """The entries of an XREADGROUP reply as redis-py returns it (RESP2 list or RESP3 map)."""
    if not reply:
        return
    items = reply.items() if isinstance(reply, dict) else reply  # RESP3 answers a map
    for stream, messages in items:
        for entry_id, fields in messages:
            if fields:
                yield parse_entry(as_text(stream), as_text(entry_id), fields)
            else:  # a pending entry deleted from the stream: nothing to store, only to acknowledge
                yield Entry(as_text(stream), as_text(entry_id), None, {})
