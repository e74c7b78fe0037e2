"""The pool's Lua library: core helpers, then pool/lua (allocation helpers, number_upsert,
number_remove)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from core.scripts import CORE_LUA, LuaLibrary

__all__ = ["POOL_LUA", "POOL_LUA_DIR"]

POOL_LUA_DIR: Final = Path(__file__).parent / "lua"
POOL_LUA: Final = LuaLibrary((CORE_LUA, POOL_LUA_DIR))
