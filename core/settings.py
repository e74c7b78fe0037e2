"""Every setting of Maskline: one frozen dataclass, read from MASKLINE_* environment variables.

Only the process (maskline/) reads the environment (`Settings.from_env`); the packages below take
the values they need as arguments, with this dataclass's defaults as theirs."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_PREFIX", "EMBEDDED_MODES", "DEV_AUTH_TOKEN", "Settings"]

ENV_PREFIX = "MASKLINE_"
# auto: start an embedded server only for a default URL that does not answer;
# always: use embedded servers whatever the URLs say; never: use the URLs as they are.
EMBEDDED_MODES = ("auto", "always", "never")
LOG_FORMATS = ("text", "json")
# What both Redis clients (redis-py and the webhooks' core/resp.py) can connect to, alike.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")

# The Auth Token of a fresh checkout: signs the sandbox's webhooks, never opens the API.
DEV_AUTH_TOKEN = "maskline-dev-auth-token"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

# Fields derived by from_env, never read from the environment themselves.
_DERIVED = frozenset({"redis_url_explicit", "database_url_explicit", "public_url_explicit"})


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "postgresql://postgres@127.0.0.1:5432/maskline"
    public_url: str = "http://127.0.0.1:8080"  # how Twilio reaches us; the base of signed webhook URLs
    host: str = "127.0.0.1"
    workers: int = 1  # `serve` processes on the port (maskline/workers.py)
    port: int = 8080
    twilio_account_sid: str = "AC" + "0" * 32
    twilio_auth_token: str = DEV_AUTH_TOKEN
    twilio_api_url: str = "https://api.twilio.com"
    data_dir: str = ".maskline"  # embedded servers keep their data here
    embedded: str = "auto"
    sweep_interval_s: float = 1.0
    webhook_deadline_s: float = 2.0  # a webhook answers within this, fallback TwiML at worst
    api_deadline_s: float = 4.0  # an API request answers within this, 503 (nothing changed) at worst
    intercept_timeout_s: float = 1.5
    callback_timeout_s: float = 5.0
    log_level: str = "INFO"
    # Behind a proxy or tunnel you trust (it sets these headers itself): check webhook signatures
    # against the URL X-Forwarded-Proto / X-Forwarded-Host name, not public_url's scheme and host.
    trust_forwarded: bool = False
    # GET /metrics asks for `Authorization: Bearer <this>` when set (empty: open, like /healthz).
    metrics_token: str = ""
    # text: "time level logger: message"; json: one object per line (maskline/logs.py).
    log_format: str = "text"
    # One access line per webhook (masked numbers, MessageSid/CallSid, outcome, latency): off by
    # default, the hot path's cost and volume; the API always has its own.
    webhook_access_log: bool = False
    # Twilio retries a webhook within seconds (a 15 s timeout, one retry unless the URL's connection
    # overrides ask for a few more); the answer given to a MessageSid / CallSid is remembered this
    # long, so a retry gets the same answer (never a second relay).
    dedupe_ttl_s: int = 900
    # An interaction record stays in Redis this long after its last change (a call besides for as
    # long as it may last); then the audit log is its only copy and answers for it (the API merges
    # the two). Redis' memory per relayed text is what this window holds.
    interaction_hot_s: int = 900
    # A closed session stays readable in Redis this long (then the audit log answers for it).
    closed_retention_s: int = 7 * 86_400
    # Recovery (maskline/recovery.py): how often each worker checks that Redis still holds its
    # copy (one GET); how long the rebuild lock lasts unless its holder renews it; how long a
    # rebuild gives the audit writer to commit the events it read before Redis lost its data.
    recovery_interval_s: float = 1.0
    recovery_lock_s: float = 15.0
    recovery_settle_s: float = 0.5
    # The sweeper and the audit writer run where their lease is held (core/lease.py): a holder
    # that dies is replaced within this many seconds (plus a third of it).
    lease_ttl_s: float = 10.0
    # A scheduled message's send claim (sessions/scheduled.py): a sender that dies mid-send leaves
    # its claimed messages `failed` (sender_died) this many seconds later; never sent twice.
    schedule_claim_s: float = 60.0
    # API key logins (relay/credentials.py). Failed logins allowed per client address and per key
    # SID in each window, then 429 until the window ends (0: no limit); scrypt threads and hash
    # jobs in flight (one more answers 429); how long a verified key is trusted before Postgres is
    # asked again (revocations take effect after this; Postgres down: verified keys keep working).
    auth_failure_limit: int = 20
    auth_failure_window_s: int = 60
    auth_hash_workers: int = 1
    auth_hash_queue: int = 8
    auth_key_fresh_s: float = 60.0
    # Requests a second allowed per API key (every worker counts in Redis), then 429 (0: no limit).
    api_rate_limit: int = 1000
    # Whether the URL came from the environment: an explicit URL that does not answer is an
    # error, a default one that does not answer is replaced by an embedded server.
    redis_url_explicit: bool = False
    database_url_explicit: bool = False
    public_url_explicit: bool = False  # else `serve` derives it from where it listens

    def __post_init__(self) -> None:
        # Signed webhook URLs are public_url + path; a trailing slash would double it and break
        # every X-Twilio-Signature check.
        object.__setattr__(self, "public_url", self.public_url.rstrip("/"))
        object.__setattr__(self, "twilio_api_url", self.twilio_api_url.rstrip("/"))
        scheme = self.redis_url.partition("://")[0]
        if scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"{ENV_PREFIX}REDIS_URL must be a {', '.join(s + '://' for s in REDIS_SCHEMES)} URL, "
                f"got {self.redis_url!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"{ENV_PREFIX}LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )
        if self.embedded not in EMBEDDED_MODES:
            raise ValueError(
                f"{ENV_PREFIX}EMBEDDED must be one of {', '.join(EMBEDDED_MODES)}, got {self.embedded!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from MASKLINE_<FIELD> variables; a bad value raises ValueError naming the variable."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in _DERIVED:
                continue
            var = ENV_PREFIX + field.name.upper()
            raw = env.get(var)
            if raw is None:
                continue
            values[field.name] = _parse(var, raw, field.type)
        values["redis_url_explicit"] = "redis_url" in values
        values["database_url_explicit"] = "database_url" in values
        values["public_url_explicit"] = "public_url" in values
        return cls(**values)


def _parse(var: str, raw: str, type_name: object) -> Any:
    # With `from __future__ import annotations` field.type is the annotation string.
    text = raw.strip()
    if type_name in (int, "int"):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{var} must be an integer, got {raw!r}") from None
    if type_name in (float, "float"):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{var} must be a number, got {raw!r}") from None
        if value != value or value < 0:  # NaN or negative: no timeout or interval means that
            raise ValueError(f"{var} must be a non-negative number, got {raw!r}")
        return value
    if type_name in (bool, "bool"):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"{var} must be 1/true/yes/on or 0/false/no/off, got {raw!r}")
    if not text:
        raise ValueError(f"{var} is set but empty")
    return text
