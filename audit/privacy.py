"""Personal data in audit events: subjects (tokens + keys), encryption, the body policy.

Every real number an event concerns becomes a *subject*: a random token (`SJ` + 32 hex) and a
random 32-byte key in `audit_subjects`. Stored rows hold the token instead of the number, and
personal text (message bodies, friendly names) encrypted under a key derived from the keys of all
the event's subjects. Erasing a number deletes its subject row: the chained rows are untouched, the
token no longer resolves and the text can no longer be decrypted ("crypto-shredding").

Cipher: XOR with a SHAKE-256 keystream of (event key, random 12-byte nonce) plus a truncated
keyed BLAKE2b tag (encrypt-then-MAC), from the standard library because the project has no crypto
dependency. Its one job is to make text unreadable once a key is destroyed; the hash chain already
guards integrity. The `enc1:` prefix versions the format, so AES-GCM can replace it later."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import asyncpg

__all__ = [
    "BODY_POLICIES",
    "ERASED",
    "REDACTED",
    "Subject",
    "event_numbers",
    "protect",
    "reveal",
    "resolve_subjects",
    "lookup_subjects",
    "body_policies",
    "tokens_in",
]

BODY_POLICIES: Final = ("keep", "redact", "hash")
ERASED: Final = "[erased]"
REDACTED: Final = "[redacted]"

# Keys whose string values are real numbers or channel identifiers (design.md, "Events").
NUMBER_FIELDS: Final = frozenset(
    {"identifier", "proxy_identifier", "from", "to", "inbound_identifier", "outbound_identifier"}
)
# Free text about a person: encrypted under the event's subject keys.
TEXT_FIELDS: Final = frozenset({"body", "friendly_name"})

_TOKEN = re.compile(r"^SJ[0-9a-f]{32}$")
_ENC_PREFIX: Final = "enc1:"
_HASH_PREFIX: Final = "sha256:"
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16

Subject = tuple[str, bytes]  # (token, key)

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
        found.update(n for n in listed if isinstance(n, str) and n)
    stack: list[Any] = [data]
    while stack:  # iterative: this runs for every event the writer stores
        value = stack.pop()
        items = value.items() if value.__class__ is dict else enumerate(value)
        for k, v in items:
            cls = v.__class__
            if cls is str:
                if v and k in NUMBER_FIELDS:
                    found.add(v)
            elif cls is dict or cls is list:
                stack.append(v)
    return found


async def resolve_subjects(conn: asyncpg.Connection, numbers: Iterable[str]) -> dict[str, Subject]:
    """number -> (token, key), creating subjects for new numbers. Call inside the write transaction."""
    wanted = sorted(set(numbers))
    if not wanted:
        return {}
    tokens = ["SJ" + os.urandom(16).hex() for _ in wanted]
    subject_keys = [os.urandom(32) for _ in wanted]
    await conn.execute(UPSERT_SUBJECTS, tokens, wanted, subject_keys)
    rows = await conn.fetch(SELECT_SUBJECTS_BY_NUMBER, wanted)
    return {r["number"]: (r["subject_id"], bytes(r["key"])) for r in rows}


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


def _event_key(subject_keys: list[bytes]) -> bytes:
    return hashlib.sha256(b"maskline audit event key\x00" + b"".join(subject_keys)).digest()


def _xor_stream(key: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = hashlib.shake_256(key + nonce).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _tag(key: bytes, message: bytes) -> bytes:
    # Keyed BLAKE2b is a MAC by design (no HMAC construction needed) and cheaper per event.
    return hashlib.blake2b(message, key=key, digest_size=_TAG_BYTES).digest()


def _encrypt(key: bytes, text: str) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    ct = _xor_stream(key, nonce, text.encode())
    tag = _tag(key, nonce + ct)
    return _ENC_PREFIX + base64.urlsafe_b64encode(nonce + tag + ct).decode()


def _decrypt(key: bytes, value: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(value[len(_ENC_PREFIX) :])
    except ValueError:
        return None
    nonce, tag, ct = (
        raw[:_NONCE_BYTES],
        raw[_NONCE_BYTES : _NONCE_BYTES + _TAG_BYTES],
        raw[_NONCE_BYTES + _TAG_BYTES :],
    )
    if not hmac.compare_digest(tag, _tag(key, nonce + ct)):
        return None
    return _xor_stream(key, nonce, ct).decode(errors="replace")


def protect(
    data: dict[str, Any], subjects: Mapping[str, Subject], policy: str, numbers: set[str] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The event's data as stored, and the sorted subject tokens it concerns.

    Numbers become tokens wherever they appear; `data.body` follows the Service's body policy; the
    remaining personal text is encrypted when the event has subjects (an event about no number,
    such as `service.updated`, has nobody to erase and stays readable). `numbers`: the event's
    numbers when the caller already has them (`event_numbers`)."""
    if numbers is None:
        numbers = event_numbers(data)
    mine = {n: subjects[n] for n in numbers if n in subjects}
    tokens = sorted(tok for tok, _ in mine.values())
    by_token = dict(mine.values())
    key = _event_key([by_token[t] for t in tokens]) if tokens else None

    body = data.get("body")
    if body.__class__ is str:
        data = dict(data)
        if policy == "redact":
            data["body"] = REDACTED
        elif policy == "hash":
            digest = hmac.new(key, body.encode(), hashlib.sha256) if key else hashlib.sha256(body.encode())
            data["body"] = _HASH_PREFIX + digest.hexdigest()

    def text(value: str, field: Any) -> str:
        found = mine.get(value)
        if found is not None:
            return found[0]
        if key is not None and field in TEXT_FIELDS and not value.startswith((_HASH_PREFIX, REDACTED)):
            return _encrypt(key, value)
        return value

    def walk_dict(value: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in value.items():
            cls = v.__class__
            if cls is str:
                v = text(v, k)
            elif cls is dict:
                v = walk_dict(v)
            elif cls is list:
                v = walk_list(v, k)
            out[k] = v
        return out

    def walk_list(value: list[Any], field: str) -> list[Any]:
        out = []
        for v in value:
            cls = v.__class__
            if cls is str:
                v = text(v, field)
            elif cls is dict:
                v = walk_dict(v)
            elif cls is list:
                v = walk_list(v, field)
            out.append(v)
        return out

    return walk_dict(data), tokens


def reveal(data: Any, numbers: list[str], subjects: Mapping[str, tuple[str, bytes]]) -> Any:
    """Stored data as a reader sees it: tokens back to numbers, text decrypted; erased parts read
    "[erased]"."""
    if all(t in subjects for t in numbers):
        key: bytes | None = _event_key([subjects[t][1] for t in numbers]) if numbers else None
    else:
        key = None  # one of the event's subjects was erased: its text is gone for good

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            if _TOKEN.match(value):
                found = subjects.get(value)
                return found[0] if found else ERASED
            if value.startswith(_ENC_PREFIX):
                plain = _decrypt(key, value) if key is not None else None
                return ERASED if plain is None else plain
            return value
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(data)


def tokens_in(value: Any) -> set[str]:
    """Subject tokens anywhere in stored data (to look their subjects up before `reveal`)."""
    found: set[str] = set()
    if isinstance(value, str):
        if _TOKEN.match(value):
            found.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            found |= tokens_in(v)
    elif isinstance(value, list):
        for v in value:
            found |= tokens_in(v)
    return found
