"""Personal data in audit events as stored: numbers as subject tokens, text encrypted, the body policy.

`protect` turns an event's data into what is stored (numbers replaced by the tokens of their
subjects, audit/subjects.py; message bodies as the Service's body policy keeps them; the remaining
personal text encrypted under a key derived from the keys of all the event's subjects), `reveal`
turns it back for a reader, "[erased]" wherever a subject no longer exists.

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
from collections.abc import Mapping
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from audit.subjects import ERASED, TOKEN_PATTERN, EventKeys, Subject, event_numbers

__all__ = [
    "REDACTED",
    "TEXT_FIELDS",
    "event_cipher",
    "protect",
    "reveal",
]

REDACTED: Final = "[redacted]"

# Free text about a person: encrypted under the event's subject keys.
# `data` is the Interaction's `data` as Twilio Proxy shows it: JSON text holding the message body.
TEXT_FIELDS: Final = frozenset({"body", "friendly_name", "data"})

_ENC1_PREFIX: Final = "enc1:"  # legacy stream cipher: read only
_ENC2_PREFIX: Final = "enc2:"  # AES-256-GCM
_ENC_PREFIXES: Final = (_ENC1_PREFIX, _ENC2_PREFIX)
_KEPT_AS_IS: Final = ("sha256:", "[redacted]")  # body policy results, never encrypted
_HASH_PREFIX: Final = "sha256:"
_NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16


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
            if TOKEN_PATTERN.match(value):
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
