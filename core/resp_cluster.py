"""The webhook hot path's Redis client on a Redis Cluster: RespClient's interface (execute,
run_script, aclose) over one pipelined RespClient per master.

Each command goes to the master that serves its key's hash slot, from the slot map CLUSTER SLOTS
gives. Redirections are followed as the cluster specification says: MOVED updates the map (and
the whole map is fetched again) and retries on the new owner; ASK retries once on the importing
node, preceded by ASKING, without changing the map; TRYAGAIN / CLUSTERDOWN wait a little and
retry. A master that cannot be reached (killed, failing over) makes the client fetch the map from
another node and retry, until the command's time budget is spent: a text is relayed once the
replica has taken over, never routed by a node that does not own its slot (Redis refuses that
itself, with MOVED).

Only the commands the hot path sends are routed: a script (its first key picks the node) and
single-key commands; anything else raises ValueError."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection
from redis.crc import key_slot
from redis.exceptions import ConnectionError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.connections import is_cluster
from core.resp import DEFAULT_COMMAND_TIMEOUT_S, RespClient, _tls_context

__all__ = ["ClusterRespClient", "fast_client"]

log = logging.getLogger("maskline.redis")

SLOTS: Final = 1 << 14  # hash slots
MAX_REDIRECTS: Final = 8
RETRY_PAUSE_S: Final = 0.05
# Commands whose first argument is not a key: routed by the key that follows numkeys.
_SCRIPTS: Final = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO"})


class ClusterRespClient:
    def __init__(
        self,
        startup: list[tuple[str, int]],
        *,
        password: str | None = None,
        username: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_timeout_s: float = 2.0,
        command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S,
    ) -> None:
        self.startup = list(startup)
        self.options: dict[str, Any] = {
            "password": password,
            "username": username,
            "tls": tls,
            "connect_timeout_s": connect_timeout_s,
            "command_timeout_s": command_timeout_s,
        }
        self.command_timeout_s = command_timeout_s
        self._nodes: dict[tuple[str, int], RespClient] = {}
        self._slots: list[tuple[str, int] | None] = [None] * SLOTS
        self._refreshing: asyncio.Lock | None = None
        self._mapped = False

    @property
    def target(self) -> str:
        return "redis+cluster://" + ",".join(f"{h}:{p}" for h, p in self.startup)

    @classmethod
    def like(cls, client: aioredis.Redis, **options: Any) -> ClusterRespClient:
        """Connect to the cluster a redis-py RedisCluster connects to (its start-up nodes,
        credentials and TLS)."""
        kw: dict[str, Any] = dict(getattr(client, "connection_kwargs", {}))
        nodes = [(n.host, int(n.port)) for n in client.nodes_manager.startup_nodes.values()]  # type: ignore[attr-defined]
        kind = kw.get("connection_class")
        tls = _tls_context(kw) if isinstance(kind, type) and issubclass(kind, SSLConnection) else None
        return cls(nodes, password=kw.get("password"), username=kw.get("username"), tls=tls, **options)

    # ------------------------------------------------------------------ routing

    def _node(self, address: tuple[str, int]) -> RespClient:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = RespClient(address[0], address[1], **self.options)
            # Whether FCALL works, as the other nodes found (a promoted replica runs the same Redis
            # as a rule; if not, its first FCALL tells it otherwise).
            node.functions = next(
                (n.functions for n in self._nodes.values() if n.functions is not None), None
            )
        return node

    async def refresh(self) -> None:
        """Fetch the slot map (CLUSTER SLOTS) from the first node that answers."""
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        async with self._refreshing:
            known = list(dict.fromkeys([*self._nodes, *self.startup]))
            random.shuffle(known)  # spread the load; a dead node is skipped below
            errors = []
            for address in known:
                try:
                    reply = await self._node(address).execute("CLUSTER", "SLOTS", timeout_s=1.0)
                except (ConnectionError, TimeoutError, RedisTimeoutError, ResponseError) as err:
                    # (a node too slow to answer is skipped like a dead one: the next may know)
                    errors.append(f"{address[0]}:{address[1]}: {err}")
                    continue
                slots: list[tuple[str, int] | None] = [None] * SLOTS
                for start, end, master, *_ in reply:
                    owner = (str(master[0]) or address[0], int(master[1]))
                    slots[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
                self._slots, self._mapped = slots, True
                return
            raise ConnectionError(f"no Redis Cluster node answered CLUSTER SLOTS: {'; '.join(errors)}")

    async def _owner(self, slot: int) -> RespClient:
        if not self._mapped:
            await self.refresh()
        owner = self._slots[slot]
        if owner is None:
            raise RedisClusterException(f"no Redis Cluster node serves slot {slot}")
        return self._node(owner)

    async def _routed(self, key: str, call: Callable[[RespClient, bool], Awaitable[Any]]) -> Any:
        """`call(node, asking)` on the node that serves `key`, following MOVED/ASK and riding
        out a failover within the command's time budget."""
        slot = key_slot(key.encode())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout_s
        asked: RespClient | None = None
        for _ in range(MAX_REDIRECTS + int(self.command_timeout_s / RETRY_PAUSE_S)):
            node = asked or await self._owner(slot)
            try:
                return await call(node, asked is not None)
            except ResponseError as err:
                kind, _, rest = str(err).partition(" ")
                if kind not in ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"):
                    raise
                asked = None
                if kind == "MOVED":
                    self._slots[slot] = _address(rest.split()[1])
                    self._mapped = False  # a resharding or failover moved more than this slot
                elif kind == "ASK":
                    asked = self._node(_address(rest.split()[1]))
                    continue
                elif loop.time() + RETRY_PAUSE_S < deadline:
                    await asyncio.sleep(RETRY_PAUSE_S)
                else:
                    raise
            except ConnectionError:
                # The master is gone (killed, or failing over): ask the cluster again.
                if loop.time() + RETRY_PAUSE_S >= deadline:
                    raise
                log.warning("Redis Cluster node %s unreachable; refreshing the slot map", node.target)
                await asyncio.sleep(RETRY_PAUSE_S)
                self._mapped = False
        raise RedisClusterException(f"too many redirections for slot {slot}")

    # ------------------------------------------------------------------ RespClient's interface

    async def execute(self, *args: Any, timeout_s: float | None = None) -> Any:
        command = str(args[0]).upper()
        if command in _SCRIPTS:
            if int(args[2]) < 1:
                raise ValueError(f"{command} without keys cannot be routed in a Redis Cluster")
            key = str(args[3])
        elif len(args) > 1:
            key = str(args[1])
        else:
            raise ValueError(f"{command} has no key to route by in a Redis Cluster")
        return await self._routed(
            key, lambda node, asking: node.execute(*args, timeout_s=timeout_s, asking=asking)
        )

    async def run_script(
        self, source: str, keys: list[str], args: list[Any], *, function: tuple[str, str] | None = None
    ) -> Any:
        return await self._routed(
            keys[0],
            lambda node, asking: node.run_script(source, keys, args, function=function, asking=asking),
        )

    async def execute_many(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Each command routed by its key (they may live on different masters), replies in order;
        a failed one gives its exception in its place."""
        return list(await asyncio.gather(*(self.execute(*args) for args in commands), return_exceptions=True))

    async def aclose(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()


def _address(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host, int(port)


def fast_client(redis: aioredis.Redis, **options: Any) -> RespClient | ClusterRespClient:
    """The hot-path client for wherever `redis` connects: one server or a cluster."""
    if is_cluster(redis):
        return ClusterRespClient.like(redis, **options)
    return RespClient.like(redis, **options)
