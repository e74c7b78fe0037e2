"""The webhooks' lean Redis client reaches exactly the server redis-py reaches (TCP, unix socket,
TLS settings), times every command out, and refuses what it cannot honour."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time

import pytest
import redis.asyncio as aioredis
from private_redis import PrivateRedis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.resp import RespClient


async def test_unix_socket_url_is_used_by_the_webhook_client_too() -> None:
    server = PrivateRedis(unixsocket=True).start()
    try:
        url = f"unix://{server.socket_path}?db=5"
        reference = aioredis.from_url(url, decode_responses=True)
        fast = RespClient.like(reference)
        assert fast.target == f"unix:{server.socket_path}"
        await fast.execute("SET", "probe", "over the socket")
        assert await reference.get("probe") == "over the socket"  # same server, same DB
        tcp_db5 = aioredis.from_url(f"redis://127.0.0.1:{server.port}/5", decode_responses=True)
        assert await tcp_db5.get("probe") == "over the socket"
        await fast.aclose()
        await reference.aclose()
        await tcp_db5.aclose()
    finally:
        server.stop()


def test_rediss_url_connects_with_tls_as_redis_py_would() -> None:
    strict = RespClient.like(aioredis.from_url("rediss://cache.example:6380/2"))
    assert (
        strict.tls is not None and strict.tls.verify_mode == ssl.CERT_REQUIRED and strict.tls.check_hostname
    )
    assert (strict.host, strict.port, strict.db) == ("cache.example", 6380, 2)
    lax = RespClient.like(aioredis.from_url("rediss://cache.example:6380/0?ssl_cert_reqs=none"))
    assert lax.tls is not None and lax.tls.verify_mode == ssl.CERT_NONE


def test_a_connection_kind_it_cannot_reproduce_is_refused() -> None:
    class Sentinelish(aioredis.Connection):
        pass

    pool = aioredis.ConnectionPool(connection_class=Sentinelish)
    with pytest.raises(ValueError, match="not supported"):
        RespClient.like(aioredis.Redis(connection_pool=pool))


async def test_every_command_times_out_and_the_connection_stays_usable() -> None:
    server = PrivateRedis().start()
    fast = RespClient(port=server.port, command_timeout_s=0.3)
    try:
        await fast.execute("SET", "k", "1")
        server.pause()
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await fast.execute("INCR", "k")
        assert time.monotonic() - started < 1.0
        server.resume()
        await asyncio.sleep(0.1)
        # The late reply to INCR was read and dropped in order: this GET gets its own answer.
        assert await fast.execute("GET", "k") == "2"
    finally:
        await fast.aclose()
        server.stop()


async def test_a_batch_gives_each_reply_in_order_with_failures_in_place_and_times_out_whole() -> None:
    server = PrivateRedis().start()
    fast = RespClient(port=server.port, command_timeout_s=0.3)
    try:
        replies = await fast.execute_many(
            [("SET", "a", "1"), ("INCR", "nope", "x"), ("GET", "a"), ("INCR", "a")]
        )
        assert replies[0] == "OK" and isinstance(replies[1], ResponseError) and replies[2:] == ["1", 2]
        assert await fast.execute_many([]) == []
        server.pause()
        replies = await fast.execute_many([("INCR", "a"), ("INCR", "a")])
        assert [type(r) for r in replies] == [RedisTimeoutError, RedisTimeoutError]
        server.resume()
        await asyncio.sleep(0.1)
        assert await fast.execute("GET", "a") == "4"  # the late replies were read and dropped
    finally:
        await fast.aclose()
        server.stop()


def test_serve_refuses_a_redis_url_it_cannot_honour() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "maskline", "serve"],
        env={"MASKLINE_REDIS_URL": "redis+sentinel://127.0.0.1:26379/mymaster", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "MASKLINE_REDIS_URL" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("reply", "command", "refused"),
    [
        ("ERR unknown command `FCALL`, with args beginning with: `x`, ", "fcall", True),  # Redis 6.2
        ("ERR unknown command `FUNCTION`, with args beginning with: `LOAD`, ", "function", True),
        ("unknown command `FUNCTION`, with args beginning with: `LIST`, ", "function", True),  # redis-py's
        ("NOPERM User u has no permissions to run the 'fcall' command", "fcall", True),  # an ACL
        ("NOPERM User u has no permissions to run the 'function|load' command", "function", True),
        # the function's own errors: the caller's answer, never a reason to run it again
        ("NOPERM User u has no permissions to run the 'set' command script: route_inbound_1", "fcall", False),
        ("NOPERM no fcall for you", "fcall", False),
        ("ERR Unknown Redis command called from script", "fcall", False),
    ],
)
def test_only_a_refused_fcall_or_function_load_means_no_functions(
    reply: str, command: str, refused: bool
) -> None:
    from redis.exceptions import ResponseError

    from core.resp import command_refused

    assert command_refused(ResponseError(reply), command) is refused
