"""Redis clients for Maskline, for one server or a Redis Cluster.

- `redis://`, `rediss://`, `unix://`: one server, through a blocking connection pool, so a burst of
  requests queues for a connection (briefly) instead of failing with "Too many connections".
- `redis+cluster://host:port[,host:port...]` (`rediss+cluster://` for TLS): a Redis Cluster; any
  node(s) to start from, the client discovers the rest and follows MOVED/ASK and failovers.

A cluster client is redis-py's `RedisCluster`, typed here as `redis.asyncio.Redis`: it offers the
same command methods, and every place where the two differ (one XREADGROUP over many streams,
the webhook client in core/resp.py) asks `is_cluster()`. Every key of a Service shares its hash
tag, so each Lua script touches one slot; the few global keys are only used by single-key
commands and pipelines without MULTI."""

from __future__ import annotations

import asyncio
from typing import Any, Final, cast
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster

__all__ = ["CLUSTER_SCHEMES", "redis_client", "is_cluster", "cluster_nodes"]

CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
# redis-py's cluster client cannot queue for a connection (it raises MaxConnectionsError):
# commands queue in _QueuedRedisCluster instead, and this ceiling per master is never reached.
CLUSTER_CONNECTIONS_PER_NODE: Final = 1024
# Query parameters a cluster URL may carry (as redis-py's rediss:// URLs do).
TLS_OPTIONS: Final = frozenset({"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"})


def redis_client(url: str, *, max_connections: int = 64, timeout_s: float = 2.0) -> aioredis.Redis:
    if url.partition("://")[0] in CLUSTER_SCHEMES:
        return cluster_client(url, max_connections=max_connections)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=CLUSTER_CONNECTIONS_PER_NODE,
        timeout=timeout_s,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)


def cluster_nodes(url: str) -> list[tuple[str, int]]:
    """The start-up nodes a `redis+cluster://` URL names (comma-separated host:port)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for spec in netloc.split(","):
        host, _, port = spec.rpartition(":")
        nodes.append((host or spec or "127.0.0.1", int(port) if port.isdigit() else 6379))
    return nodes


class _QueuedRedisCluster(RedisCluster):
    """redis-py's RedisCluster with at most `max_inflight` commands in flight: a burst queues,
    as with the single-server client's blocking pool, instead of opening a connection per
    command (which redis-py neither bounds gracefully nor survives well under a burst)."""

    def __init__(self, *args: Any, max_inflight: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inflight = asyncio.Semaphore(max_inflight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._inflight:
            return await super().execute_command(*args, **kwargs)


def cluster_client(url: str, *, max_connections: int = 64) -> aioredis.Redis:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    username, _, password = userinfo.partition(":") if ":" in userinfo else ("", "", userinfo)
    options: dict[str, Any] = dict(parse_qsl(parts.query))
    unknown = sorted(set(options) - TLS_OPTIONS)
    if unknown:
        raise ValueError(f"MASKLINE_REDIS_URL: unsupported cluster option(s) {', '.join(unknown)}")
    client = _QueuedRedisCluster(
        max_inflight=max_connections,
        startup_nodes=[ClusterNode(host, port) for host, port in cluster_nodes(url)],
        username=username or None,
        password=password or None,
        ssl=parts.scheme.startswith("rediss"),
        decode_responses=True,
        max_connections=CLUSTER_CONNECTIONS_PER_NODE,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        **options,
    )
    return cast(aioredis.Redis, client)


def is_cluster(redis: object) -> bool:
    return isinstance(redis, RedisCluster)
