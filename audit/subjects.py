"""Subjects: the numbers an audit event concerns, each as a token and a key in Postgres.

Every real number an event concerns becomes a *subject*: a random token (`SJ` + 32 hex) and a
random 32-byte key in `audit_subjects`. Stored rows hold the token instead of the number, and
personal text is encrypted under a key derived from the keys of all the event's subjects
(audit/cipher.py). Erasing a number deletes its subject row: the chained rows are untouched, the
token no longer resolves and the text can no longer be decrypted ("crypto-shredding").

Here: finding an event's numbers, creating, locking and looking up subjects (with the writer's
cache of them), the Services' body policies, and finding tokens in stored data."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "BODY_POLICIES",
    "ERASED",
    "TOKEN_PATTERN",
    "Subject",
    "EventKeys",
    "SubjectCache",
    "event_numbers",
    "resolve_subjects",
    "lookup_subjects",
    "body_policies",
    "tokens_in",
]

BODY_POLICIES: Final = ("keep", "redact", "hash")
ERASED: Final = "[erased]"

# Keys whose string values are real numbers or channel identifiers (design.md, "Events").
NUMBER_FIELDS: Final = frozenset(
    {"identifier", "proxy_identifier", "from", "to", "inbound_identifier", "outbound_identifier"}
)

TOKEN_PATTERN: Final = re.compile(r"^SJ[0-9a-f]{32}$")

Subject = tuple[str, bytes]  # (token, key)
# Event keys by sorted subject tokens: many events concern the same pair of numbers, derive once.
EventKeys = dict[tuple[str, ...], tuple[bytes, AESGCM]]

UPSERT_SUBJECTS: Final = """
INSERT INTO audit_subjects (subject_id, number, key)
SELECT s, n, k FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t (s, n, k)
ORDER BY n
ON CONFLICT (number) DO NOTHING
"""
# FOR SHARE: an erasure running now waits until the events using these keys are committed (they
# are then erased with the rest) rather than racing them.
SELECT_SUBJECTS_BY_NUMBER: Final = """
SELECT subject_id, number, key FROM audit_subjects WHERE number = ANY($1::text[]) FOR SHARE
"""
# The writer's cached subjects still exist (not erased) and are locked like the others (FOR SHARE).
LOCK_SUBJECTS_BY_TOKEN: Final = """
SELECT subject_id FROM audit_subjects WHERE subject_id = ANY($1::text[]) FOR SHARE
"""
SELECT_SUBJECTS_BY_TOKEN: Final = """
SELECT subject_id, number, key FROM audit_subjects WHERE subject_id = ANY($1::text[])
"""
SELECT_BODY_POLICIES: Final = """
SELECT sid, coalesce(options ->> 'body_policy', 'keep') AS policy FROM services WHERE sid = ANY($1::text[])
"""


def event_numbers(data: Mapping[str, Any]) -> set[str]:
    """Every number (or identifier) the event concerns: `numbers` plus the number fields, at any depth."""
    found: set[str] = set()
    listed = data.get("numbers")
    if isinstance(listed, list):
        found.update([n for n in listed if isinstance(n, str) and n])
    stack: list[Any] = []
    # Hot: runs for every event the writer stores. The top level inline, nested values iteratively.
    for k, v in data.items():
        cls = v.__class__
        if cls is str:
            if v and k in NUMBER_FIELDS:
                found.add(v)
        elif cls is dict or cls is list:
            stack.append(v)
    while stack:
        value = stack.pop()
        items = value.items() if value.__class__ is dict else enumerate(value)
        for field, item in items:
            cls = item.__class__
            if cls is str:
                if item and field in NUMBER_FIELDS:
                    found.add(item)
            elif cls is dict or cls is list:
                stack.append(item)
    return found


class SubjectCache:
    """The writer's memory of subjects (number -> (token, key)) and event keys across batches.

    A cached subject is never trusted blindly: each batch locks its cached tokens FOR SHARE and
    forgets those that no longer exist (erased), so an erased number gets a fresh subject exactly as
    without the cache. The cache only saves creating and decoding rows (and deriving event keys).
    Bounded: cleared when it grows past `max_subjects` (a cache miss costs one more row read)."""

    def __init__(self, max_subjects: int = 200_000, max_event_keys: int = 100_000) -> None:
        self.max_subjects = max_subjects
        self.max_event_keys = max_event_keys
        self.subjects: dict[str, Subject] = {}
        self.event_keys: EventKeys = {}

    def forget(self, numbers: Iterable[str]) -> None:
        for n in numbers:
            self.subjects.pop(n, None)
        self.event_keys.clear()  # keyed by tokens: an erased token is never reused, but keep it simple

    def trim(self) -> None:
        if len(self.subjects) > self.max_subjects:
            self.subjects.clear()
        if len(self.event_keys) > self.max_event_keys:
            self.event_keys.clear()


async def resolve_subjects(
    conn: asyncpg.Connection, numbers: Iterable[str], cache: SubjectCache | None = None
) -> dict[str, Subject]:
    """number -> (token, key), creating subjects for new numbers, every one locked FOR SHARE until
    the transaction ends (an erasure waits for the events using them). Call inside the write
    transaction. `cache`: the writer's SubjectCache (cached subjects are checked, not trusted)."""
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    found: dict[str, Subject] = {}
    if cache is not None:
        known = cache.subjects
        cached = [n for n in wanted if n in known]
        if cached:
            tokens = [known[n][0] for n in cached]
            alive = {r[0] for r in await conn.fetch(LOCK_SUBJECTS_BY_TOKEN, tokens)}
            gone = [n for n, t in zip(cached, tokens, strict=True) if t not in alive]
            if gone:
                cache.forget(gone)
            found = {n: known[n] for n in cached if n in known}
            wanted = [n for n in wanted if n not in found]
    if wanted:
        tokens = ["SJ" + os.urandom(16).hex() for _ in wanted]
        subject_keys = [os.urandom(32) for _ in wanted]
        await conn.execute(UPSERT_SUBJECTS, tokens, wanted, subject_keys)
        rows = await conn.fetch(SELECT_SUBJECTS_BY_NUMBER, wanted)
        fresh = {r["number"]: (r["subject_id"], bytes(r["key"])) for r in rows}
        found.update(fresh)
        if cache is not None:
            cache.trim()
            cache.subjects.update(fresh)
    return found


async def lookup_subjects(
    conn: asyncpg.Connection | asyncpg.Pool, tokens: Iterable[str]
) -> dict[str, tuple[str, bytes]]:
    """token -> (number, key) for the tokens whose subject was not erased."""
    wanted = list(set(tokens))
    if not wanted:
        return {}
    rows = await conn.fetch(SELECT_SUBJECTS_BY_TOKEN, wanted)
    return {r["subject_id"]: (r["number"], bytes(r["key"])) for r in rows}


async def body_policies(conn: asyncpg.Connection, service_sids: Iterable[str]) -> dict[str, str]:
    wanted = list({s for s in service_sids if s})
    if not wanted:
        return {}
    rows = await conn.fetch(SELECT_BODY_POLICIES, wanted)
    return {r["sid"]: (r["policy"] if r["policy"] in BODY_POLICIES else "keep") for r in rows}


def tokens_in(value: Any) -> set[str]:
    """Subject tokens anywhere in stored data (to look their subjects up before `cipher.reveal`)."""
    found: set[str] = set()
    if isinstance(value, str):
        if TOKEN_PATTERN.match(value):
            found.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            found |= tokens_in(v)
    elif isinstance(value, list):
        for v in value:
            found |= tokens_in(v)
    return found
