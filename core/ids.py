"""Every identifier Maskline mints: resource sids (Twilio's shape: two letters and 32 hex digits)
and audit event ids. One place, so their shapes cannot drift apart."""

from __future__ import annotations

import os
import threading
from typing import Final

__all__ = ["EVENT_ID_PREFIX", "new_sid", "new_event_id", "new_event_id_base", "creation_event_id"]

EVENT_ID_PREFIX: Final = "EV"
# Random bytes are drawn from the OS a page at a time (one system call per 256 sids on the hot
# path, which mints one or two per webhook); a forked child starts a pool of its own.
_POOL_BYTES: Final = 4096
_pool = b""
_taken = _POOL_BYTES
_lock = threading.Lock()


def _forget_pool() -> None:
    global _pool, _taken
    _pool, _taken = b"", _POOL_BYTES


os.register_at_fork(after_in_child=_forget_pool)


def new_sid(prefix: str) -> str:
    """`prefix` + 32 random hex digits (128 bits from os.urandom): KS (Service), PN (number), KC
    (Session), KP (Participant), KI..."""
    global _pool, _taken
    with _lock:
        if _taken + 16 > len(_pool):
            _pool, _taken = os.urandom(_POOL_BYTES), 0
        start = _taken
        _taken = start + 16
        chunk = _pool[start : start + 16]
    return prefix + chunk.hex()


def new_event_id() -> str:
    """An audit event id, "EV" + 32 hex; the audit log stores each id once."""
    return new_sid(EVENT_ID_PREFIX)


def new_event_id_base() -> str:
    """ "EV" + 28 hex: a script that emits several events appends 4 hex digits per event."""
    return new_event_id()[:30]


def creation_event_id(sid: str) -> str:
    """The id of the event that creates resource `sid` ("EV" + its 32 hex digits). Deterministic,
    so that two attempts to record one interaction (the route script, then the record of a webhook
    that fell back) store it once: the audit log keeps the first event of an id."""
    return EVENT_ID_PREFIX + sid[2:]
