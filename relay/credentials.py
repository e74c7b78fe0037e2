"""API keys: HTTP Basic with key SID and secret, as Twilio's clients send them. Only a scrypt hash
of the secret is stored; verified keys are cached briefly in memory so the hash (deliberately
slow) is not paid on every request.

Hardening (what a login costs and who may try):
- an unknown, revoked or malformed SID costs one scrypt, against a dummy hash, like a wrong
  secret: which SIDs exist cannot be read from timing; a malformed SID never reaches Postgres;
- failed logins are counted in Redis per client address and per key SID (`FailureLimiter`);
  over the limit a login answers 429 without hashing anything (Redis down: no limit, logged);
- scrypt runs on a small dedicated thread pool with a bounded queue (`HashPool`): a full queue
  answers 429, so guessing cannot take every core from the webhooks or the event loop;
- a key verified in this worker (same SID, same secret) is answered from memory before the
  limiter, and stays usable while Postgres is unreachable (stale-while-error); once the cache
  entry is older than `fresh_s` the row is read again, so a revocation takes effect.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final

import asyncpg
import redis.asyncio as aioredis
import redis.exceptions

from core.errors import Unavailable
from core.settings import Settings

__all__ = ["ApiKey", "create_key", "revoke_key", "KeyVerifier", "hash_secret", "PERMISSIONS"]
__all__ += ["key_verifier", "TooManyAttempts", "FailureLimiter", "HashPool"]

log = logging.getLogger("maskline.auth")

PERMISSIONS: Final = frozenset({"proxy", "audit"})
_SCRYPT: Final = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_FRESH_S: Final = 60.0
_SID: Final = re.compile(r"SK[0-9a-f]{32}")
_MAX_SECRET: Final = 256
# C0 controls, DEL and lone surrogates: never in a secret create_key makes.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
# What an unknown SID is checked against: a random salt and digest no secret matches (2^-256), so
# the refusal costs exactly one scrypt, like a wrong secret for a known SID.
_DUMMY_HASH: Final = f"scrypt${secrets.token_hex(16)}${secrets.token_hex(32)}"
# Postgres unreachable (closed pool, refused or lost connection, shutting down, too slow).
_PG_DOWN: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)
_REDIS_DOWN: Final = (redis.exceptions.RedisError, OSError, TimeoutError)


# The limiter's Redis keys. They live here rather than in core/keys.py because nothing else reads
# them. The `{auth}` hash tag puts every counter in one slot (one MULTI may span both in a Cluster).
def failures_by_address_key(address: str) -> str:
    """Failed logins from one client address (request.remote) in the current window."""
    return f"ml:{{auth}}:fail:addr:{address}"


def failures_by_sid_key(sid: str) -> str:
    """Failed logins naming one (well-formed) key SID in the current window."""
    return f"ml:{{auth}}:fail:sid:{sid}"


@dataclass(frozen=True)
class ApiKey:
    """The key a request authenticated with (set by the auth middleware as request[API_KEY])."""

    sid: str
    friendly_name: str
    permissions: frozenset[str]  # "proxy" (the Proxy API), "audit" (compliance read API)
    service_sids: frozenset[str] | None  # None: every Service

    def may_see(self, service_sid: str) -> bool:
        return self.service_sids is None or service_sid in self.service_sids


class TooManyAttempts(Exception):
    """Answer 429 (Twilio's 20429) with `Retry-After: retry_after_s`; nothing was verified."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


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
        salt = bytes.fromhex(salt_hex)
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hash_secret(secret, salt).split("$")[2]
    return hmac.compare_digest(candidate, digest_hex)


def well_formed_sid(sid: str) -> bool:
    return _SID.fullmatch(sid) is not None


def well_formed_secret(secret: str) -> bool:
    return 0 < len(secret) <= _MAX_SECRET and _CONTROL.search(secret) is None


def parse_basic(header: str) -> tuple[str, str] | None:
    """(sid, secret) from `Basic base64(sid:secret)`, the scheme in any case (RFC 7617); None if
    the header is not that. A payload that is not UTF-8 gives ("", ""): a malformed SID."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return "", ""
    sid, _, secret = text.partition(":")
    return sid, secret


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


class HashPool:
    """scrypt off the event loop on its own threads (hashlib.scrypt releases the GIL), at most
    `queue` jobs in flight (running or waiting): one more is refused with TooManyAttempts instead
    of waiting, so a flood of guesses neither queues without bound nor takes every core."""

    def __init__(self, *, workers: int = 1, queue: int = 8) -> None:
        if workers < 1 or queue < 1:
            raise ValueError(f"HashPool needs workers >= 1 and queue >= 1, got {workers} and {queue}")
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maskline-scrypt")
        self._slots = asyncio.Semaphore(queue)

    async def matches(self, secret: str, stored: str) -> bool:
        if self._slots.locked():
            raise TooManyAttempts("Too many logins are being verified; retry shortly", 1)
        await self._slots.acquire()
        job = asyncio.get_running_loop().run_in_executor(self._executor, _matches, secret, stored)
        # The slot is freed when the hash is done, not when a cancelled caller stops waiting for it.
        job.add_done_callback(lambda _: self._slots.release())
        return await asyncio.shield(job)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class FailureLimiter:
    """Failed logins per client address and per key SID, fixed windows in Redis (shared by every
    worker). A successful login does not reset them. Redis unreachable: no limit (logged once)."""

    def __init__(
        self, redis: aioredis.Redis, *, limit: int = 20, window_s: int = 60, timeout_s: float = 0.5
    ) -> None:
        if limit < 1 or window_s < 1:
            raise ValueError(f"FailureLimiter needs limit >= 1 and window_s >= 1, got {limit} and {window_s}")
        self.redis = redis
        self.limit = limit
        self.window_s = window_s
        self.timeout_s = timeout_s
        self._failing = False

    @staticmethod
    def _keys(address: str, sid: str | None) -> list[str]:
        found = [failures_by_address_key(address or "unknown")]
        if sid is not None:
            found.append(failures_by_sid_key(sid))
        return found

    async def retry_after(self, address: str, sid: str | None) -> int | None:
        """Seconds until the window that holds this address or SID over the limit ends; None if neither is."""
        keys = self._keys(address, sid)
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.get(key)
                        pipe.ttl(key)
                    replies = await pipe.execute()
        except _REDIS_DOWN as err:
            self._down(err)
            return None
        self._up()
        waits = [
            int(ttl) if int(ttl) > 0 else self.window_s
            for count, ttl in zip(replies[::2], replies[1::2], strict=True)
            if count is not None and int(count) >= self.limit
        ]
        return max(waits) if waits else None

    async def record_failure(self, address: str, sid: str | None) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self.redis.pipeline(transaction=True) as pipe:
                    for key in self._keys(address, sid):
                        # The first failure of a window creates the counter with the window's
                        # expiry (SET NX EX); INCR keeps it. MULTI: never a counter without expiry.
                        pipe.set(key, 0, ex=self.window_s, nx=True)
                        pipe.incr(key)
                    await pipe.execute()
        except _REDIS_DOWN as err:
            self._down(err)
            return
        self._up()

    def _down(self, err: BaseException) -> None:
        if not self._failing:
            self._failing = True
            log.warning("login limiter off: Redis unavailable (%s); failed logins are not limited", err)

    def _up(self) -> None:
        if self._failing:
            self._failing = False
            log.info("login limiter on again: Redis answers")


@dataclass(frozen=True)
class _Verified:
    fingerprint: bytes  # sha256(secret): the secret itself is never kept
    key: ApiKey
    secret_hash: str  # the row's scrypt hash when verified: unchanged, no need to hash again
    fresh_until: float  # monotonic; after it the row is read again (revocation, permissions)


def _fingerprint(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class KeyVerifier:
    def __init__(
        self,
        pg: asyncpg.Pool,
        *,
        limiter: FailureLimiter | None = None,
        hasher: HashPool | None = None,
        fresh_s: float = _FRESH_S,
        lookup_timeout_s: float = 2.0,
    ) -> None:
        self.pg = pg
        self.limiter = limiter
        self.hasher = hasher or HashPool()
        self.fresh_s = fresh_s
        self.lookup_timeout_s = lookup_timeout_s
        self._cache: dict[str, _Verified] = {}
        self._pg_failing = False

    def close(self) -> None:
        self.hasher.close()

    async def verify_header(self, header: str | None) -> ApiKey | None:
        """The key of an Authorization header, without the failure limiter (see authenticate)."""
        creds = parse_basic(header) if header else None
        return None if creds is None else await self.verify(*creds)

    async def authenticate(self, header: str | None, address: str) -> ApiKey | None:
        """The key of an Authorization header sent from `address`, or None (401). Raises
        TooManyAttempts (429) when the address or the SID failed too often, or the hash queue is
        full; Unavailable (503) when Postgres is needed and unreachable."""
        if not header:
            return None  # not an attempt: nothing to count
        creds = parse_basic(header)
        if creds is not None:
            known = await self._known(*creds)
            if known is not None:
                return known
        sid = creds[0] if creds is not None and well_formed_sid(creds[0]) else None
        if self.limiter is not None:
            wait = await self.limiter.retry_after(address, sid)
            if wait is not None:
                raise TooManyAttempts(f"Too many failed logins; retry in {wait} s", wait)
        key = await self._check(*creds) if creds is not None else None
        if key is None and self.limiter is not None:
            await self.limiter.record_failure(address, sid)
        return key

    async def verify(self, sid: str, secret: str) -> ApiKey | None:
        return await self._known(sid, secret) or await self._check(sid, secret)

    async def _known(self, sid: str, secret: str) -> ApiKey | None:
        """The key if this SID and secret were verified here before (no scrypt); None otherwise,
        or if the key is gone from Postgres (the caller then checks in full)."""
        entry = self._cache.get(sid)
        if entry is None or not hmac.compare_digest(entry.fingerprint, _fingerprint(secret)):
            return None
        now = time.monotonic()
        if entry.fresh_until > now:
            return entry.key
        try:
            row = await self._lookup(sid)
        except _PG_DOWN as err:
            # Stale-while-error: this secret was verified; keep it usable, ask again shortly.
            if not self._pg_failing:
                self._pg_failing = True
                log.warning("Postgres unavailable (%r): verified API keys are served from memory", err)
            self._cache[sid] = _Verified(
                entry.fingerprint, entry.key, entry.secret_hash, now + min(self.fresh_s, 1.0)
            )
            return entry.key
        if row is None or row["secret_hash"] != entry.secret_hash:
            self._cache.pop(sid, None)
            return None
        return self._remember(sid, entry.fingerprint, row)

    async def _check(self, sid: str, secret: str) -> ApiKey | None:
        """The full check: always exactly one scrypt, whether the SID exists or not."""
        if not (well_formed_sid(sid) and well_formed_secret(secret)):
            await self.hasher.matches("", _DUMMY_HASH)
            return None
        try:
            row = await self._lookup(sid)
        except _PG_DOWN as err:
            raise Unavailable("Maskline's key store is unavailable; retry shortly") from err
        if row is None:
            self._cache.pop(sid, None)  # revoked
            await self.hasher.matches(secret, _DUMMY_HASH)
            return None
        if not await self.hasher.matches(secret, row["secret_hash"]):
            return None
        return self._remember(sid, _fingerprint(secret), row)

    async def _lookup(self, sid: str) -> asyncpg.Record | None:
        async with asyncio.timeout(self.lookup_timeout_s):
            row: asyncpg.Record | None = await self.pg.fetchrow(SELECT, sid)
        if self._pg_failing:
            self._pg_failing = False
            log.info("Postgres answers again: API keys are checked against it")
        return row

    def _remember(self, sid: str, fingerprint: bytes, row: asyncpg.Record) -> ApiKey:
        key = ApiKey(
            sid=row["sid"],
            friendly_name=row["friendly_name"],
            permissions=frozenset(row["permissions"]),
            service_sids=frozenset(row["service_sids"]) if row["service_sids"] is not None else None,
        )
        if len(self._cache) > 10_000 and sid not in self._cache:
            self._cache.clear()
        self._cache[sid] = _Verified(fingerprint, key, row["secret_hash"], time.monotonic() + self.fresh_s)
        return key


def key_verifier(settings: Settings, pg: asyncpg.Pool, redis: aioredis.Redis) -> KeyVerifier:
    """The verifier the app uses: limiter on `redis` (unless the limit is 0), its own hash pool."""
    limiter = None
    if settings.auth_failure_limit != 0:  # negative: FailureLimiter refuses it
        limiter = FailureLimiter(
            redis, limit=settings.auth_failure_limit, window_s=settings.auth_failure_window_s
        )
    return KeyVerifier(
        pg,
        limiter=limiter,
        hasher=HashPool(workers=settings.auth_hash_workers, queue=settings.auth_hash_queue),
        fresh_s=settings.auth_key_fresh_s,
    )
