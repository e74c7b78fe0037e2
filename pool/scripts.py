"""Loads the Lua scripts once (shared helpers prepended) and runs them by SHA.

Each script returns JSON: the resource, or `{"e": code, "m": message}` which becomes a PoolError."""

from __future__ import annotations

import uuid
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from pool.errors import MasklineError, NotFound, PoolError

__all__ = ["Scripts", "event_id", "event_id_base", "raise_for", "script_source"]

_LUA_DIR = Path(__file__).parent / "lua"
_NAMES = (
    "create_session",
    "add_participant",
    "remove_participant",
    "update_session",
    "close_expired",
    "delete_session",
    "number_upsert",
    "number_remove",
    "route_inbound",
)


@cache
def script_source(name: str) -> str:
    """A script's full source: the shared helpers, then the script."""
    return (_LUA_DIR / "_lib.lua").read_text() + "\n" + (_LUA_DIR / f"{name}.lua").read_text()


def event_id() -> str:
    return "EV" + uuid.uuid4().hex


def event_id_base() -> str:
    """28 hex chars; a script appends 4 more per event it emits."""
    return "EV" + uuid.uuid4().hex[:28]


def raise_for(result: dict[str, Any]) -> dict[str, Any]:
    """Turn a script's `{"e": code, "m": message}` into the matching domain error."""
    code = result.get("e")
    if code is None:
        return result
    message = str(result.get("m", ""))
    err: MasklineError
    if code == 20404:
        err = NotFound(message)
    elif code == 80609:
        err = PoolError(message, code=80609, status=409)
    else:
        err = PoolError(message, code=int(code))
    raise err


class Scripts:
    """The pool's Lua scripts registered on one Redis client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._scripts: dict[str, AsyncScript] = {
            name: redis.register_script(script_source(name))
            for name in _NAMES
            if (_LUA_DIR / f"{name}.lua").exists()
        }

    async def call(self, name: str, prefix: str, *args: str | int) -> Any:
        return await self._scripts[name](keys=[prefix], args=list(args))

    async def call_json(self, name: str, prefix: str, *args: str | int) -> dict[str, Any]:
        raw = await self.call(name, prefix, *args)
        return raise_for(orjson.loads(raw))
