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
import binascii
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
    "SubjectCache",
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


def _event_key(subject_keys: list[bytes]) -> bytes:
    return hashlib.sha256(b"maskline audit event key\x00" + b"".join(subject_keys)).digest()


def _xor_stream(key: bytes, nonce: bytes, data: bytes) -> bytes:
    stream = hashlib.shake_256(key + nonce).digest(len(data))
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(len(data), "big")


def _tag(key: bytes, message: bytes) -> bytes:
    return hashlib.blake2b(message, key=key, digest_size=_TAG_BYTES).digest()


_NONCE_POOL_BYTES: Final = _NONCE_BYTES * 4096
_nonce_pool = b""
_nonce_at = 0
_URLSAFE: Final = bytes.maketrans(b"+/", b"-_")


def _reset_nonces() -> None:
    # A forked child must never reuse the random bytes its parent drew (nonce reuse under one key).
    global _nonce_pool, _nonce_at
    _nonce_pool, _nonce_at = b"", 0


os.register_at_fork(after_in_child=_reset_nonces)


def _nonce() -> bytes:
    """A fresh random 96-bit nonce; drawn from os.urandom 4096 at a time (one syscall, not 4096)."""
    global _nonce_pool, _nonce_at
    at = _nonce_at
    if at >= len(_nonce_pool):
        _nonce_pool, at = os.urandom(_NONCE_POOL_BYTES), 0
    _nonce_at = at + _NONCE_BYTES
    return _nonce_pool[at : at + _NONCE_BYTES]


def _encrypt(cipher: AESGCM, text: str) -> str:
    # Random 96-bit nonces: safe far beyond the texts one set of subjects (one key) ever gets (2**32).
    nonce = _nonce()
    raw = binascii.b2a_base64(nonce + cipher.encrypt(nonce, text.encode(), None), newline=False)
    return _ENC2_PREFIX + raw.translate(_URLSAFE).decode()


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


def event_cipher(
    tokens: list[str], mine: Mapping[str, str], subjects: Mapping[str, Subject], event_keys: EventKeys | None
) -> tuple[bytes, AESGCM]:
    """(event key, its AES-GCM) for an event whose sorted subject tokens are `tokens`."""
    tkey = tuple(tokens)
    cached = event_keys.get(tkey) if event_keys is not None else None
    if cached is None:
        key = _event_key([k for _, k in sorted(subjects[n] for n in mine)])
        cached = (key, AESGCM(key))
        if event_keys is not None:
            event_keys[tkey] = cached
    return cached


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
    (`event_numbers`); `event_keys`: a cache of event keys the caller keeps (many events concern
    the same pair of numbers)."""
    if numbers is None:
        numbers = event_numbers(data)
    mine = {n: subjects[n][0] for n in numbers if n in subjects}
    tokens = sorted(mine.values())
    key: bytes | None = None
    cipher: AESGCM | None = None
    if tokens:
        key, cipher = event_cipher(tokens, mine, subjects, event_keys)

    if policy != "keep":
        changed = {}
        if data.get("body").__class__ is str:
            changed["body"] = _apply_body_policy(data["body"], policy, key, nested=False)
        if data.get("data").__class__ is str:
            changed["data"] = _apply_body_policy(data["data"], policy, key, nested=True)
        if changed:
            data = {**data, **changed}
    return _walk_dict(data, mine, cipher), tokens


def _walk_dict(value: dict[str, Any], mine: Mapping[str, str], cipher: AESGCM | None) -> dict[str, Any]:
    # Hot: runs for every event the writer stores. Builds a new dict; the input is left as it was.
    out = {}
    get = mine.get
    for k, v in value.items():
        cls = v.__class__
        if cls is str:
            tok = get(v)
            if tok is not None:
                v = tok
            elif cipher is not None and k in TEXT_FIELDS and not v.startswith(_KEPT_AS_IS):
                v = _encrypt(cipher, v)
        elif cls is dict:
            v = _walk_dict(v, mine, cipher)
        elif cls is list:
            v = _walk_list(v, k, mine, cipher)
        out[k] = v
    return out


def _walk_list(value: list[Any], field: str, mine: Mapping[str, str], cipher: AESGCM | None) -> list[Any]:
    out = []
    get = mine.get
    encrypt = cipher is not None and field in TEXT_FIELDS
    for v in value:
        cls = v.__class__
        if cls is str:
            tok = get(v)
            if tok is not None:
                v = tok
            elif encrypt and not v.startswith(_KEPT_AS_IS):
                v = _encrypt(cipher, v)  # type: ignore[arg-type]
        elif cls is dict:
            v = _walk_dict(v, mine, cipher)
        elif cls is list:
            v = _walk_list(v, field, mine, cipher)
        out.append(v)
    return out


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
