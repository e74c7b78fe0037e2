"""A lean pipelined Redis client for the webhook hot path.

redis-py's asyncio client spends most of a relay's CPU on per-command bookkeeping (pool checkout,
locks, timeouts). The hot path needs one command per webhook (EVALSHA route_inbound), so this
client keeps one connection, writes each command as soon as it is asked for, and matches replies
to callers in order (Redis answers in order), parsing with hiredis. Errors surface as redis-py's
own exceptions, so callers handle faults the same way for both clients.

It connects exactly where a redis-py client connects (`like`): TCP, TLS (rediss://) or a unix
socket (unix://), never anywhere else; a connection kind it cannot reproduce is refused with
ValueError at start-up. Every command has a timeout (a reply that comes later is read and
dropped in order, so the connection stays usable)."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections import deque
from typing import Any, Final, Protocol, cast

import hiredis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# A command's reply, beyond which the caller gets TimeoutError (its own deadline is usually sooner).
DEFAULT_COMMAND_TIMEOUT_S: Final = 5.0
# How often a connection's watchdog looks for commands past their timeout.
WATCH_S: Final = 0.05

__all__ = ["RespClient", "FastRedis", "command_refused"]


class FastRedis(Protocol):
    """What the hot path needs of its client: RespClient, or ClusterRespClient on a cluster."""

    async def execute(self, *args: Any, timeout_s: float | None = None) -> Any: ...

    async def run_script(
        self, source: str, keys: list[str], args: list[Any], *, function: tuple[str, str] | None = None
    ) -> Any: ...

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]: ...

    async def aclose(self) -> None: ...


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Protocol(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, target: str) -> None:
        # The loop and the target, kept: asyncio.get_running_loop() costs a getpid() system call
        # on Python 3.11 (~1.3 % of a relay's CPU when asked per command).
        self.loop, self.target = loop, target
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ResponseError)
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost = False
        # (deadline, waiter, command) of every command sent, in order: one watchdog timer per
        # connection fails the late ones (a timer per command cost a measurable share of a relay).
        self.deadlines: deque[tuple[float, asyncio.Future[Any], object]] = deque()
        self.watchdog: asyncio.TimerHandle | None = None

    def expect(self, deadline: float, command: object) -> asyncio.Future[Any]:
        """The waiter for the next reply, failed by the watchdog if it is not there by `deadline`
        (the loop's time)."""
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self.waiters.append(waiter)
        self.deadlines.append((deadline, waiter, command))
        if self.watchdog is None:
            self.watchdog = self.loop.call_later(WATCH_S, self.watch)
        return waiter

    def watch(self) -> None:
        """Fail the waiters past their deadline (their replies, when they come, are read and
        dropped in order); run every WATCH_S while commands are pending."""
        loop, target = self.loop, self.target
        now = loop.time()
        pending = self.deadlines
        while pending and pending[0][1].done():
            pending.popleft()
        for deadline, waiter, command in pending:
            if deadline <= now:
                _expire(waiter, target, command)
        while pending and pending[0][1].done():
            pending.popleft()
        self.watchdog = loop.call_later(WATCH_S, self.watch) if pending else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; both have write() and close().
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            waiter = self.waiters.popleft()
            if waiter.done():
                continue  # its caller gave up (timeout); the reply is still consumed in order
            if isinstance(reply, ResponseError):
                waiter.set_exception(reply)
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))


_ASKING: Final = _encode(("ASKING",))


def command_refused(err: ResponseError, command: str) -> bool:
    """Whether `command` itself was refused (Redis 6.2: unknown command; an ACL: NOPERM), as
    opposed to an error of the function it ran, which must not run twice."""
    text = str(err).lower()
    # (Redis quotes it 'fcall' or `fcall`, and an ACL names a subcommand: 'function|load')
    named = f"'{command}" in text or f"`{command}`" in text
    return named and (
        text.startswith(("err unknown command", "unknown command")) or "has no permissions to run" in text
    )


def _ignore_reply(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it; the command's own reply tells


def _outcome(waiter: asyncio.Future[Any], target: str) -> Any:
    """A done waiter's reply, or its exception as a value (execute_many)."""
    if not waiter.done():  # (cannot happen: replies come in order)
        waiter.cancel()
        return RedisTimeoutError(f"Redis at {target} did not answer in time")
    return waiter.exception() or waiter.result()


def _expire(waiter: asyncio.Future[Any], target: str, command: object) -> None:
    if not waiter.done():
        waiter.set_exception(RedisTimeoutError(f"Redis at {target} did not answer {command!s} in time"))


class RespClient:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        db: int = 0,
        password: str | None = None,
        username: str | None = None,
        path: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout_s: float = 2.0,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> None:
        self.host, self.port, self.db, self.path, self.tls = host, port, db, path, tls
        self.password, self.username = password, username
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None
        self._sha: dict[str, str] = {}
        # Redis 7 functions: None until tried, then whether this server runs them (Redis 6.2 has
        # no FCALL; an ACL may refuse FUNCTION LOAD): scripts by SHA otherwise.
        self.functions: bool | None = None
        self.target = f"unix:{path}" if path else f"{'rediss' if tls else 'redis'}://{host}:{port}/{db}"

    @classmethod
    def like(cls, client: aioredis.Redis, **options: Any) -> RespClient:
        """Connect exactly where a redis-py client connects (host and port, or unix socket; TLS;
        db; credentials). Raises ValueError for a connection kind this client cannot reproduce."""
        pool = client.connection_pool
        kw = pool.connection_kwargs
        kind = pool.connection_class
        common: dict[str, Any] = {
            "db": int(kw.get("db", 0) or 0),
            "password": kw.get("password"),
            "username": kw.get("username"),
            **options,
        }
        if issubclass(kind, UnixDomainSocketConnection):
            return cls(path=str(kw["path"]), **common)
        if issubclass(kind, SSLConnection):
            return cls(
                str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379)), tls=_tls_context(kw), **common
            )
        if kind is Connection:
            return cls(str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379)), **common)
        raise ValueError(
            f"Redis connections of kind {kind.__name__} are not supported by the webhook client; "
            "use a redis://, rediss:// or unix:// MASKLINE_REDIS_URL"
        )

    async def _connection(self) -> _Protocol:
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            loop = asyncio.get_running_loop()
            new_protocol = functools.partial(_Protocol, loop, self.target)
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    if self.path:
                        _, proto = await loop.create_unix_connection(new_protocol, self.path)
                    else:
                        _, proto = await loop.create_connection(
                            new_protocol,
                            self.host,
                            self.port,
                            ssl=self.tls,
                            server_hostname=self.host if self.tls else None,
                        )
            except (OSError, TimeoutError) as err:
                raise ConnectionError(f"cannot reach Redis at {self.target}: {err}") from None
            self._proto = proto
            if self.password:
                auth = (self.username, self.password) if self.username else (self.password,)
                await self.execute("AUTH", *auth)
            if self.db:
                await self.execute("SELECT", self.db)
            return proto

    async def execute(self, *args: Any, timeout_s: float | None = None, asking: bool = False) -> Any:
        """Send one command and await its reply. `asking`: precede it with ASKING in the same
        write (a Redis Cluster's ASK redirection: this node is importing the key's slot)."""
        proto = await self._connection()
        loop = proto.loop
        data = _encode(args)
        if asking:
            ok: asyncio.Future[Any] = loop.create_future()
            ok.add_done_callback(_ignore_reply)
            proto.waiters.append(ok)
            data = _ASKING + data
        # The connection's watchdog fails the waiter once its time is up (up to WATCH_S late).
        waiter = proto.expect(loop.time() + (timeout_s or self.command_timeout_s), args[0])
        assert proto.transport is not None
        # Written at once: coalescing writes per loop iteration measured slower, twice (2,100 vs
        # 2,950 and 4,590 vs 6,222 relays/s).
        proto.transport.write(data)
        return await waiter

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Several commands in one write (one system call for the batch), their replies in order;
        a command that failed gives its exception in its place instead of raising."""
        proto = await self._connection()
        deadline = proto.loop.time() + self.command_timeout_s
        waiters = [proto.expect(deadline, args[0]) for args in commands]
        assert proto.transport is not None
        proto.transport.write(b"".join(_encode(args) for args in commands))
        # Replies come in order, and the watchdog fails a batch's waiters (one deadline) together:
        # once the last is done, every one is. Awaiting it alone spares a callback per reply
        # (asyncio.gather's: ~1.5 us per answered webhook).
        if waiters:
            try:
                await waiters[-1]
            except asyncio.CancelledError:
                for waiter in waiters:
                    waiter.cancel()
                raise
            except Exception:  # noqa: S110 - its outcome is returned in its place below
                pass
        return [_outcome(w, self.target) for w in waiters]

    async def run_script(
        self,
        source: str,
        keys: list[str],
        args: list[Any],
        *,
        function: tuple[str, str] | None = None,
        asking: bool = False,
    ) -> Any:
        """FCALL of `function` (its name, and its library's text to load where it is missing:
        core/scripts.py LuaLibrary.functions) where the server runs Redis 7 functions, else
        EVALSHA of `source`, loading the script once if this Redis does not know it yet."""
        if function is not None and self.functions is not False:
            name, library = function
            try:
                return await self.execute("FCALL", name, len(keys), *keys, *args, asking=asking)
            except ResponseError as err:  # no such function (yet), or no FCALL at all
                if not (str(err).startswith("ERR Function not found") or command_refused(err, "fcall")):
                    raise
            try:
                await self.execute("FUNCTION", "LOAD", "REPLACE", library)
                self.functions = True
            except ResponseError as err:
                if not (command_refused(err, "function") or str(err).startswith("ERR Error registering")):
                    raise
                self.functions = False  # no functions here: scripts by SHA from now on
            if self.functions:
                return await self.execute("FCALL", name, len(keys), *keys, *args, asking=asking)
        sha = self._sha.get(source)
        if sha is None:
            sha = self._sha[source] = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args, asking=asking)
        except ResponseError as err:
            if not str(err).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", source)
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args, asking=asking)
        except ResponseError as err:
            if str(err).startswith("NOSCRIPT"):
                raise NoScriptError(str(err)) from None
            raise

    async def aclose(self) -> None:
        if self._proto is not None and self._proto.transport is not None:
            self._proto.transport.close()
        self._proto = None


def _tls_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """The TLS settings redis-py was given (rediss:// query parameters), as an SSLContext."""
    context = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"), cadata=kw.get("ssl_ca_data"))
    if kw.get("ssl_certfile"):
        context.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"))
    reqs = kw.get("ssl_cert_reqs", "required")
    if reqs in ("none", ssl.CERT_NONE):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif reqs in ("optional", ssl.CERT_OPTIONAL):
        context.verify_mode = ssl.CERT_OPTIONAL
    if kw.get("ssl_check_hostname") is False:
        context.check_hostname = False
    return context
