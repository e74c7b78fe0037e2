"""API keys: HTTP Basic with key SID and secret, as Twilio's clients send them. Only a scrypt hash
of the secret is stored; verified keys are cached briefly in memory so the hash (deliberately
slow) is not paid on every request."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

import asyncpg

__all__ = ["ApiKey", "create_key", "revoke_key", "KeyVerifier", "hash_secret", "PERMISSIONS"]

PERMISSIONS: Final = frozenset({"proxy", "audit"})
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_CACHE_S: Final = 60.0


@dataclass(frozen=True)
class ApiKey:
    """The key a request authenticated with (set by the auth middleware as request[API_KEY])."""

    sid: str
    friendly_name: str
    permissions: frozenset[str]  # "proxy" (the Proxy API), "audit" (compliance read API)
    service_sids: frozenset[str] | None  # None: every Service

    def may_see(self, service_sid: str) -> bool:
        return self.service_sids is None or service_sid in self.service_sids


INSERT: Final = """
INSERT INTO api_keys (sid, friendly_name, secret_hash, permissions, service_sids) VALUES ($1, $2, $3, $4, $5)
"""
SELECT: Final = """
SELECT sid, friendly_name, secret_hash, permissions, service_sids FROM api_keys
WHERE sid = $1 AND date_revoked IS NULL
"""
REVOKE: Final = (
    "UPDATE api_keys SET date_revoked = now() WHERE sid = $1 AND date_revoked IS NULL RETURNING sid"
)


def hash_secret(secret: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def _matches(secret: str, stored: str) -> bool:
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hash_secret(secret, bytes.fromhex(salt_hex)).split("$")[2]
    return hmac.compare_digest(candidate, digest_hex)


async def create_key(
    pg: asyncpg.Pool | asyncpg.Connection,
    name: str,
    *,
    permissions: frozenset[str] = frozenset({"proxy"}),
    service_sids: list[str] | None = None,
) -> tuple[str, str]:
    """Returns (sid, secret). The secret is shown once and never stored."""
    unknown = set(permissions) - PERMISSIONS
    if unknown:
        raise ValueError(f"unknown permission(s) {sorted(unknown)}; choose from {sorted(PERMISSIONS)}")
    sid = "SK" + secrets.token_hex(16)
    secret = secrets.token_urlsafe(24)
    await pg.execute(INSERT, sid, name, hash_secret(secret), sorted(permissions), service_sids)
    return sid, secret


async def revoke_key(pg: asyncpg.Pool | asyncpg.Connection, sid: str) -> bool:
    return await pg.fetchval(REVOKE, sid) is not None


class KeyVerifier:
    def __init__(self, pg: asyncpg.Pool) -> None:
        self.pg = pg
        # sid -> (sha256(secret), key, valid until): a revoked key stops working within _CACHE_S.
        self._cache: dict[str, tuple[bytes, ApiKey, float]] = {}

    async def verify_header(self, header: str | None) -> ApiKey | None:
        if not header or not header.startswith("Basic "):
            return None
        try:
            sid, _, secret = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return await self.verify(sid, secret)

    async def verify(self, sid: str, secret: str) -> ApiKey | None:
        fingerprint = hashlib.sha256(secret.encode()).digest()
        cached = self._cache.get(sid)
        now = time.monotonic()
        if cached and cached[2] > now and hmac.compare_digest(cached[0], fingerprint):
            return cached[1]
        row = await self.pg.fetchrow(SELECT, sid)
        # scrypt takes tens of ms: off the event loop, so other requests are not held up.
        if row is None or not await asyncio.to_thread(_matches, secret, row["secret_hash"]):
            return None
        key = ApiKey(
            sid=row["sid"],
            friendly_name=row["friendly_name"],
            permissions=frozenset(row["permissions"]),
            service_sids=frozenset(row["service_sids"]) if row["service_sids"] is not None else None,
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[sid] = (fingerprint, key, now + _CACHE_S)
        return key
