"""Personal data in audit events: subjects (tokens + keys), encryption, the body policy.

Every real number an event concerns becomes a *subject*: a random token (`SJ` + 32 hex) and a
random 32-byte key in `audit_subjects`. Stored rows hold the token instead of the number, and
personal text (message bodies, friendly names) encrypted under a key derived from the keys of all
the event's subjects. Erasing a number deletes its subject row: the chained rows are untouched, the
token no longer resolves and the text can no longer be decrypted ("crypto-shredding").

Cipher: AES-256-GCM (`cryptography`), written `enc2:` + base64(nonce || ciphertext || tag). Its one
job is to make text unreadable once a key is destroyed; the hash chain already guards integrity.
Rows written before it carry `enc1:` (XOR with a SHAKE-256 keystream plus a keyed BLAKE2b tag,
standard library only): still decrypted, never written any more."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import asyncpg
import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "BODY_POLICIES",
    "ERASED",
    "REDACTED",
    "Subject",
    "EventKeys",
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
# `data` is the Interaction's `data` as Twilio Proxy shows it: JSON text holding the message body.
TEXT_FIELDS: Final = frozenset({"body", "friendly_name", "data"})

_TOKEN = re.compile(r"^SJ[0-9a-f]{32}$")
_ENC1_PREFIX: Final = "enc1:"  # legacy stream cipher: read only
_ENC2_PREFIX: Final = "enc2:"  # AES-256-GCM
_ENC_PREFIXES: Final = (_ENC1_PREFIX, _ENC2_PREFIX)
_KEPT_AS_IS: Final = ("sha256:", "[redacted]")  # body policy results, never encrypted
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
    return hashlib.blake2b(message, key=key, digest_size=_TAG_BYTES).digest()


def _encrypt(cipher: AESGCM, text: str) -> str:
    # Random 96-bit nonces: safe far beyond the texts one set of subjects (one key) ever gets (2**32).
    nonce = os.urandom(_NONCE_BYTES)
    return (
        _ENC2_PREFIX + base64.urlsafe_b64encode(nonce + cipher.encrypt(nonce, text.encode(), None)).decode()
    )


def _decrypt(key: bytes, value: str) -> str | None:
    try:
        raw = base64.urlsafe_b64decode(value[len(_ENC2_PREFIX) :])
    except ValueError:
        return None
    nonce, rest = raw[:_NONCE_BYTES], raw[_NONCE_BYTES:]
    if value.startswith(_ENC2_PREFIX):
        try:
            return AESGCM(key).decrypt(nonce, rest, None).decode(errors="replace")
        except (InvalidTag, ValueError):
            return None
    tag, ct = rest[:_TAG_BYTES], rest[_TAG_BYTES:]  # enc1
    if not hmac.compare_digest(tag, _tag(key, nonce + ct)):
        return None
    return _xor_stream(key, nonce, ct).decode(errors="replace")


def _apply_body_policy(value: str, policy: str, key: bytes | None, *, nested: bool) -> str:
    """`body` (or, `nested`, the body inside an Interaction's `data` JSON text) as the policy keeps it."""
    if nested:
        try:
            inner = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        if inner.__class__ is not dict or inner.get("body").__class__ is not str:
            return value
        inner["body"] = _apply_body_policy(inner["body"], policy, key, nested=False)
        return orjson.dumps(inner).decode()
    if policy == "redact":
        return REDACTED
    digest = hmac.new(key, value.encode(), hashlib.sha256) if key else hashlib.sha256(value.encode())
    return _HASH_PREFIX + digest.hexdigest()


EventKeys = dict[tuple[str, ...], tuple[bytes, AESGCM]]


def protect(
    data: dict[str, Any],
    subjects: Mapping[str, Subject],
    policy: str,
    numbers: set[str] | None = None,
    event_keys: EventKeys | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The event's data as stored, and the sorted subject tokens it concerns.

    Numbers become tokens wherever they appear; `data.body` (and the body inside an Interaction's
    `data` text) follows the Service's body policy; the remaining personal text is encrypted when
    the event has subjects (an event about no number, such as `service.updated`, has nobody to
    erase and stays readable). `numbers`: the event's numbers when the caller already has them
    (`event_numbers`); `event_keys`: a cache of event keys the caller keeps across a batch (many
    events concern the same pair of numbers)."""
    if numbers is None:
        numbers = event_numbers(data)
    mine = {n: subjects[n][0] for n in numbers if n in subjects}
    tokens = sorted(mine.values())
    key: bytes | None = None
    cipher: AESGCM | None = None
    if tokens:
        tkey = tuple(tokens)
        cached = event_keys.get(tkey) if event_keys is not None else None
        if cached is None:
            key = _event_key([k for _, k in sorted(subjects[n] for n in mine)])
            cached = (key, AESGCM(key))
            if event_keys is not None:
                event_keys[tkey] = cached
        key, cipher = cached

    if policy != "keep":
        changed = {}
        if data.get("body").__class__ is str:
            changed["body"] = _apply_body_policy(data["body"], policy, key, nested=False)
        if data.get("data").__class__ is str:
            changed["data"] = _apply_body_policy(data["data"], policy, key, nested=True)
        if changed:
            data = {**data, **changed}

    def walk_dict(value: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in value.items():
            cls = v.__class__
            if cls is str:
                tok = mine.get(v)
                if tok is not None:
                    v = tok
                elif cipher is not None and k in TEXT_FIELDS and not v.startswith(_KEPT_AS_IS):
                    v = _encrypt(cipher, v)
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
                tok = mine.get(v)
                if tok is not None:
                    v = tok
                elif cipher is not None and field in TEXT_FIELDS and not v.startswith(_KEPT_AS_IS):
                    v = _encrypt(cipher, v)
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
            if value.startswith(_ENC_PREFIXES):
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
