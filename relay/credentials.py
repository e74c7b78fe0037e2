"""API credentials: HTTP Basic as Twilio's clients send it, with an API key (SK... SID and its
secret) or with the Twilio Account SID and Auth Token Maskline is configured with (full access, as
at Twilio). Only a scrypt hash of a key's secret is stored; verified keys are cached briefly in
memory so the hash (deliberately slow) is not paid on every request. The Auth Token is compared
by digest in constant time; it is accepted only once it is set (never the built-in development
value).

Hardening (what a login costs and who may try):
- an unknown, revoked or malformed SID costs one scrypt, against a dummy hash, like a wrong
  secret: which SIDs exist cannot be read from timing; a malformed SID never reaches Postgres;
- failed logins are counted in Redis per client address and per key SID (relay/login_limits.py);
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

from core.errors import Unavailable
from core.settings import DEV_AUTH_TOKEN, Settings
from relay.login_limits import FailureLimiter, TooManyAttempts

__all__ = ["ApiKey", "create_key", "revoke_key", "KeyVerifier", "hash_secret", "PERMISSIONS"]
__all__ += ["key_verifier", "HashPool", "AccountLogin"]

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


@dataclass(frozen=True)
class ApiKey:
    """The key a request authenticated with (set by the auth middleware as request[API_KEY])."""

    sid: str
    friendly_name: str
    permissions: frozenset[str]  # "proxy" (the Proxy API), "audit" (compliance read API)
    service_sids: frozenset[str] | None  # None: every Service

    def may_see(self, service_sid: str) -> bool:
        return self.service_sids is None or service_sid in self.service_sids


@dataclass(frozen=True)
class AccountLogin:
    """The Twilio account's own credentials: Account SID as user, Auth Token as password, full
    access to every Service (as an Auth Token has at Twilio). Only a digest of the token is kept."""

    account_sid: str
    token_digest: bytes

    @classmethod
    def of(cls, account_sid: str, auth_token: str) -> AccountLogin:
        return cls(account_sid, _fingerprint(auth_token))

    def key(self) -> ApiKey:
        return ApiKey(self.account_sid, "Account credentials", PERMISSIONS, None)

    def matches(self, sid: str, secret: str) -> bool:
        # Both sides are digests of equal length: the compare takes the same time however much
        # of the token was right.
        return sid == self.account_sid and hmac.compare_digest(self.token_digest, _fingerprint(secret))


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
        account: AccountLogin | None = None,
    ) -> None:
        self.pg = pg
        self.account = account
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
            known = self._account(*creds) or await self._known(*creds)
            if known is not None:
                return known
        sid = creds[0] if creds is not None and self._countable(creds[0]) else None
        if self.limiter is not None:
            wait = await self.limiter.retry_after(address, sid)
            if wait is not None:
                raise TooManyAttempts(f"Too many failed logins; retry in {wait} s", wait)
        key = await self._check(*creds) if creds is not None else None
        if key is None and self.limiter is not None:
            await self.limiter.record_failure(address, sid)
        return key

    async def verify(self, sid: str, secret: str) -> ApiKey | None:
        return self._account(sid, secret) or await self._known(sid, secret) or await self._check(sid, secret)

    def _account(self, sid: str, secret: str) -> ApiKey | None:
        if self.account is not None and self.account.matches(sid, secret):
            return self.account.key()
        return None

    def _countable(self, sid: str) -> bool:
        """Failures naming this SID are counted per SID: a key's, or the account's."""
        return well_formed_sid(sid) or (self.account is not None and sid == self.account.account_sid)

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
        """The full check: always exactly one scrypt, whether the SID exists or not (a wrong Auth
        Token too: the answer takes as long as a wrong key secret)."""
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
    """The verifier the app uses: limiter on `redis` (unless the limit is 0), its own hash pool,
    the account's credentials once an Auth Token is configured."""
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
        account=account_login(settings),
    )


def account_login(settings: Settings) -> AccountLogin | None:
    """The account's login, or None while the Auth Token is the built-in development value (a
    token everyone can read must not open the API)."""
    if settings.twilio_auth_token == DEV_AUTH_TOKEN:
        return None
    return AccountLogin.of(settings.twilio_account_sid, settings.twilio_auth_token)
