"""The one Lua loader: every script is a documented `.lua` file, loaded with its layer's helpers and
run by SHA.

A `LuaLibrary` is a stack of script folders, lowest layer first (core/lua, then pool/lua, then
sessions/lua). A script's source is: the Lua constants the library was given (field lists shared
with Python, so both read them by name), every helper file (`_*.lua`) of every layer in order, then
the script itself, found in the highest layer that has it. Redis 6.2 has no FUNCTION LOAD, hence
the prepending; and since Redis runs a script's whole text on every call, each script gets only the
helpers it names, directly or through another helper (a helper file's top-level `local` definitions
are its units; a top-level `do` block always goes in): defining every helper on every call made
finish_scheduled cost Redis twice what it did with the few it used.

Every script gets the caller's deadline as its last ARGV (core/deadline.py); one that starts too
late answers the error DEADLINE, raised here as DeadlineExceeded. Each state-changing script
returns JSON: the resource, or `{"e": code, "m": message}`, which `raise_for` turns into the
matching domain error."""

from __future__ import annotations

import asyncio
import hashlib
import re
import weakref
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Final, NoReturn

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from core.connections import is_cluster
from core.deadline import DEADLINE_REPLY, DeadlineExceeded, script_arg
from core.errors import MasklineError, NotFound, PoolError
from core.resp import FastRedis, command_refused

__all__ = ["CORE_LUA", "LuaLibrary", "Scripts", "prune_function_libraries", "raise_for", "raise_deadline"]

CORE_LUA: Final = Path(__file__).parent / "lua"


# A Lua constant: a list of names (a Lua array of strings), or names to integers or to plain words,
# or integers (a byte, say) to plain words (a Lua table).
Constant = Sequence[str] | Mapping[str, int] | Mapping[str, str] | Mapping[int, str]


# Every library this release defines (the modules that define them are imported by any process
# that runs their scripts): prune_function_libraries keeps theirs.
_DEFINED: weakref.WeakSet[LuaLibrary] = weakref.WeakSet()
LIBRARY_PREFIX: Final = "maskline_"


class LuaLibrary:
    def __init__(self, layers: Sequence[Path], *, constants: Mapping[str, Constant] | None = None) -> None:
        self.layers = tuple(layers)
        self.constants = dict(constants or {})
        _DEFINED.add(self)

    def extend(self, layer: Path, *, constants: Mapping[str, Constant] | None = None) -> LuaLibrary:
        """This library with one more layer on top (and more constants)."""
        return LuaLibrary((*self.layers, layer), constants={**self.constants, **(constants or {})})

    @cached_property
    def prelude(self) -> str:
        lines = [f"local {name} = {_lua_table(values)}" for name, values in self.constants.items()]
        for layer in self.layers:
            lines.extend(p.read_text() for p in sorted(layer.glob("_*.lua")))
        return "\n".join(lines) + "\n"

    @cached_property
    def names(self) -> tuple[str, ...]:
        """Every script (not helper) of the library."""
        found = {p.stem for layer in self.layers for p in layer.glob("*.lua") if not p.stem.startswith("_")}
        return tuple(sorted(found))

    @cached_property
    def _units(self) -> list[tuple[frozenset[str] | None, str, frozenset[str]]]:
        """The prelude cut at its top-level `local` and `do` lines: (names it defines, or None for
        code that always runs; its text; the names it mentions)."""
        units: list[list[str]] = []
        for line in self.prelude.splitlines():
            if not units or line.startswith("local ") or line.rstrip() == "do":
                units.append([])
            units[-1].append(line)
        found = []
        for lines in units:
            text = "\n".join(lines)
            match = _DEFINES.match(text)
            names = (
                frozenset(n.strip() for n in (match.group(1) or match.group(2)).split(",")) if match else None
            )
            code = "\n".join(line for line in lines if not line.lstrip().startswith("--"))
            found.append((names, text, frozenset(_NAME.findall(code))))
        return found

    @cached_property
    def functions(self) -> tuple[str, dict[str, str]]:
        """The library as one Redis 7 function library: (its text for FUNCTION LOAD, each script's
        function name). Its helpers are defined once, when the library loads, instead of on every
        call (the prepended helpers are ~5 % of the routing script's time in Redis); the code that
        must run per call (the prelude's `do` blocks and the names set from KEYS / ARGV, such as
        P) opens each function. Names carry the library's hash, so two releases' libraries live
        side by side. A library runs no code when it loads (Redis 7.0 gives it no Lua globals
        then): a helper unit that would is refused here."""
        top, per_call = [], []
        for names, text, _ in self._units:
            code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
            if names is None:
                per_call.append(text)
            elif _PER_CALL.search(code):  # `local P = KEYS[1]`: declared once, set per call
                top.append("local " + ", ".join(sorted(names)))
                per_call.append(text.replace("local ", "", 1))
            elif not code.lstrip().startswith("local function") and ("(" in code or " for " in f" {code}"):
                raise ValueError(f"Lua helper {sorted(names)} runs code when loaded; make it a constant")
            else:
                top.append(text)
        prologue = "\n".join(per_call)
        bodies = {name: self._body(name) for name in self.names}
        digest = hashlib.sha1("\n".join([*top, prologue, *bodies.values()]).encode()).hexdigest()[:12]
        functions = {name: f"{name}_{digest}" for name in self.names}
        lines = [f"#!lua name={LIBRARY_PREFIX}{digest}", *top]
        for name, body in bodies.items():
            lines.append(
                f"redis.register_function('{functions[name]}', function(KEYS, ARGV)\n{prologue}\n{body}\nend)"
            )
        return "\n".join(lines) + "\n", functions

    @property
    def library_name(self) -> str:
        """Its function library's name: `maskline_{hash}` (`functions`)."""
        return self.functions[0].split("\n", 1)[0].removeprefix("#!lua name=")

    def _body(self, name: str) -> str:
        for layer in reversed(self.layers):
            path = layer / f"{name}.lua"
            if path.exists():
                return path.read_text()
        raise KeyError(f"no Lua script {name!r} in {', '.join(str(p) for p in self.layers)}")

    def source(self, name: str) -> str:
        body = self._body(name)
        return self._helpers_for(body) + body

    def _helpers_for(self, body: str) -> str:
        """The prelude's units that `body` needs, in their order (any mention of a name counts,
        even in a comment of the script: at worst a helper too many, never one too few)."""
        wanted = set(_NAME.findall(body))
        kept = [names is None for names, _, _ in self._units]
        for names, _, mentions in self._units:
            if names is None:
                wanted |= mentions
        grown = True
        while grown:  # a helper's own helpers, to a fixed point
            grown = False
            for i, (names, _, mentions) in enumerate(self._units):
                if not kept[i] and names is not None and names & wanted:
                    kept[i], grown = True, True
                    wanted |= mentions
        return "\n".join(text for (_, text, _), keep in zip(self._units, kept, strict=True) if keep) + "\n"


_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PER_CALL: Final = re.compile(r"\b(KEYS|ARGV)\b")
# `local function name(` or `local a, b = ...` at the start of a unit.
_DEFINES: Final = re.compile(r"local\s+function\s+([A-Za-z_]\w*)|local\s+([A-Za-z_][\w\s,]*?)\s*=")


def _lua_string(value: str) -> str:
    if not _PLAIN.fullmatch(value):
        raise ValueError(
            f"Lua constant strings must be plain words (letters, digits, _ and -), got {value!r}"
        )
    return f"'{value}'"


_PLAIN: Final = re.compile(r"[A-Za-z0-9_-]*")


def _lua_value(value: int | str) -> str:
    return _lua_string(value) if isinstance(value, str) else str(int(value))


async def prune_function_libraries(redis: Any) -> list[str]:
    """Delete the function libraries of other releases (a `maskline_{hash}` that no library of
    this one builds) from Redis, from every master of a cluster; returns their names. Libraries
    live in Redis' RDB and AOF until deleted, one per release. A release still running beside this
    one (a rolling update) loads its own again at its next call (core/resp.py). Nothing to do
    where Redis has no functions (6.2) or Maskline's ACL user may not list or delete them."""
    keep: set[str] = set()
    for library in list(_DEFINED):
        try:
            keep.add(library.library_name)
        except Exception:  # noqa: S112 - one that cannot be built was never loaded either
            continue
    targets: list[dict[str, Any]] = [{}]
    if is_cluster(redis):  # each master holds its own libraries (its node list: once it knows the slots)
        await redis.initialize()
        targets = [{"target_nodes": node} for node in redis.get_primaries()]
    deleted: list[str] = []
    for target in targets:
        try:
            listed = await redis.execute_command(
                "FUNCTION LIST", "LIBRARYNAME", f"{LIBRARY_PREFIX}*", **target
            )
        except ResponseError as err:
            if command_refused(err, "function"):
                return deleted
            raise
        for entry in listed:
            name = _library_name(entry)
            if not name.startswith(LIBRARY_PREFIX) or name in keep:
                continue
            try:
                await redis.execute_command("FUNCTION DELETE", name, **target)
            except ResponseError as err:
                if command_refused(err, "function"):  # may list, may not delete
                    return deleted
                if "not found" not in str(err).lower():  # (unless deleted meanwhile)
                    raise
            else:
                deleted.append(name)
    return deleted


def _library_name(entry: Any) -> str:
    """One library of FUNCTION LIST's reply: its fields as a list of names and values (RESP2) or
    as a map, names as text or bytes."""
    fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2], strict=True))
    name = fields.get("library_name", fields.get(b"library_name", ""))
    return name.decode() if isinstance(name, bytes) else str(name)


def _lua_table(values: Constant) -> str:
    if isinstance(values, Mapping):
        return "{" + ", ".join(f"[{_lua_value(k)}] = {_lua_value(v)}" for k, v in values.items()) + "}"
    return "{" + ", ".join(_lua_string(v) for v in values) + "}"


def raise_for(result: dict[str, Any]) -> dict[str, Any]:
    """Turn a script's `{"e": code, "m": message}` into the matching domain error."""
    code = result.get("e")
    if code is None:
        return result
    message = str(result.get("m", ""))
    err: MasklineError
    if code == 20404:
        err = NotFound(message)
    else:
        err = PoolError(message, code=int(code))  # its HTTP status from core.errors.CATALOGUE
    raise err


def raise_deadline(err: ResponseError) -> NoReturn:
    """Re-raise a script's DEADLINE error reply as DeadlineExceeded (other errors unchanged)."""
    if str(err).startswith(DEADLINE_REPLY):
        raise DeadlineExceeded() from None
    raise err


class Scripts:
    """A library's scripts registered on one Redis client (redis-py loads each once, by SHA)."""

    def __init__(self, redis: aioredis.Redis, library: LuaLibrary) -> None:
        self.library = library
        self.redis = redis
        self.fast: FastRedis | None = None
        self._sources = {name: library.source(name) for name in library.names}
        text, names = library.functions
        self._functions = {name: (function, text) for name, function in names.items()}
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(source) for name, source in self._sources.items()
        }
        # A cluster's masters learn every script up front (SCRIPT LOAD goes to all of them):
        # redis-py's NOSCRIPT fallback breaks connections when many first calls race on a cluster.
        self._unloaded = is_cluster(redis)
        self._loading: asyncio.Lock | None = None

    async def _load_everywhere(self) -> None:
        if self._loading is None:
            self._loading = asyncio.Lock()
        async with self._loading:
            if self._unloaded:
                for script in self._scripts.values():
                    await self.redis.script_load(script.script)
                self._unloaded = False

    def run_on(self, fast: FastRedis | None) -> None:
        """Run the scripts through `fast`, the pipelined client of core/resp.py (a fraction of
        redis-py's CPU per call; it loads a script where it is missing), or through redis-py again
        (None)."""
        self.fast = fast

    async def call(self, name: str, prefix: str, *args: str | int) -> Any:
        try:
            if self.fast is not None:
                return await self.fast.run_script(
                    self._sources[name], [prefix], [*args, script_arg()], function=self._functions[name]
                )
            if self._unloaded:
                await self._load_everywhere()
            return await self._scripts[name](keys=[prefix], args=[*args, script_arg()])
        except ResponseError as err:
            raise_deadline(err)

    async def call_json(self, name: str, prefix: str, *args: str | int) -> dict[str, Any]:
        raw = await self.call(name, prefix, *args)
        return raise_for(orjson.loads(raw))
