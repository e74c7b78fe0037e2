"""Redis clients for Maskline: a blocking connection pool, so a burst of requests queues for a
connection (briefly) instead of failing with "Too many connections"."""

from __future__ import annotations

import redis.asyncio as aioredis

__all__ = ["redis_client"]


def redis_client(url: str, *, max_connections: int = 64, timeout_s: float = 2.0) -> aioredis.Redis:
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        decode_responses=True,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)
