"""SimCluster: whole gossipkv clusters on a SimNetwork, under one (mock) clock, for tests.

Each simulated peer is a real :class:`gossipkv.Node` running the same code as in production; only
its transport, randomness, wall clock and persistence are simulated. A peer's persisted record
survives :meth:`SimCluster.kill` so :meth:`SimCluster.restart` behaves like a process restart on
the same data dir (a new, higher generation).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio

from .._errors import GossipKVError
from .._node import Node
from .._persist import NodeStore
from ..membership._gossiper import GossipConfig
from ..storage import MemoryEngine
from ._sim import SimNetwork

PORT = 7400
WALL_EPOCH_MS = 1_780_000_000_000  # a fixed fake "now" so generations are reproducible


class SimCluster:
    """A set of simulated peers on one :class:`SimNetwork`.

    Use :func:`open_sim_cluster` to create one. Peers are named by the caller; peer ``name`` listens at
    ``"name:7400"`` on the simulated network.
    """

    def __init__(
        self,
        net: SimNetwork,
        nursery: trio.Nursery,
        *,
        seed: int | str,
        config: GossipConfig,
    ) -> None:
        self.net = net
        self.seed = seed
        self.config = config
        self.nodes: dict[str, Node] = {}
        self._nursery = nursery
        self._scopes: dict[str, trio.CancelScope] = {}
        self._stores: dict[str, NodeStore] = {}
        # The simulated "disks": a peer's data outlives a kill and is there on restart.
        self.storage: dict[str, MemoryEngine] = {}
        self.hints: dict[str, MemoryEngine] = {}
        self._incarnations: dict[str, int] = {}

    @staticmethod
    def address(name: str) -> str:
        return f"{name}:{PORT}"

    def wall_ms(self) -> int:
        return WALL_EPOCH_MS + int(trio.current_time() * 1000)

    async def start(
        self, name: str, *, seeds: Iterable[str] = (), bootstrap: bool | None = None, **kwargs: Any
    ) -> Node:
        """Start peer ``name`` (seeds are peer names); returns once it serves."""
        if name in self.nodes:
            raise ValueError(f"{name} is already running")
        incarnation = self._incarnations.get(name, 0) + 1
        self._incarnations[name] = incarnation
        node = Node(
            name=name,
            listen=self.address(name),
            seeds=[self.address(s) for s in seeds],
            config=self.config,
            cluster=kwargs.pop("cluster", self.config.cluster),
            transport=self.net.transport(self.address(name)),
            rng=random.Random(f"{self.seed}/node/{name}/{incarnation}"),
            wall_clock=self.wall_ms,
            store=self._stores.setdefault(name, NodeStore()),
            storage=self.storage.setdefault(name, MemoryEngine()),
            hints=self.hints.setdefault(name, MemoryEngine()),
            bootstrap=bootstrap,
            **kwargs,
        )
        scope = trio.CancelScope()
        self._scopes[name] = scope
        self.nodes[name] = node

        async def run(*, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
            with scope:
                try:
                    await node.run(task_status=task_status)
                except GossipKVError:
                    # A killed peer's transport fails under it; that is the crash, not a bug.
                    if not scope.cancel_called:
                        raise
            if self.nodes.get(name) is node:
                del self.nodes[name]

        await self._nursery.start(run)
        return node

    def kill(self, name: str) -> None:
        """Crash peer ``name`` (like SIGKILL): its connections drop and its tasks stop."""
        self.net.crash(self.address(name))
        self._scopes.pop(name).cancel()
        del self.nodes[name]

    async def restart(self, name: str, *, seeds: Iterable[str] = (), **kwargs: Any) -> Node:
        """Kill (if running) and start ``name`` again with its persisted record."""
        if name in self.nodes:
            self.kill(name)
        return await self.start(name, seeds=seeds, **kwargs)

    def pause(self, name: str) -> None:
        """Freeze peer ``name`` (like SIGSTOP): no frames in or out, its loops stop."""
        self.net.pause(self.address(name))

    def resume(self, name: str) -> None:
        self.net.resume(self.address(name))

    def partition(self, *groups: Iterable[str], one_way: bool = False) -> None:
        self.net.partition(*([self.address(n) for n in g] for g in groups), one_way=one_way)

    def heal(self) -> None:
        self.net.heal()

    async def wait_until(self, predicate: Callable[[], bool], *, poll: float = 0.05) -> None:
        """Wait (in simulated time) until ``predicate()`` holds; callers bound it with fail_after."""
        # Polling in simulated time is deterministic and costs nothing in real time.
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(poll)


@asynccontextmanager
async def open_sim_cluster(
    n: int = 0,
    *,
    seed: int | str = 0,
    config: GossipConfig | None = None,
    latency: float = 0.001,
    jitter: float = 0.0,
) -> AsyncIterator[SimCluster]:
    """Run a simulated cluster; start ``n`` peers ``n1..nN`` joining through ``n1``.

    Run it under ``trio.testing.MockClock(autojump_threshold=0)`` to make it deterministic and fast.
    """
    net = SimNetwork(seed, latency=latency, jitter=jitter)
    async with trio.open_nursery() as nursery:
        await nursery.start(net.run)
        cluster = SimCluster(net, nursery, seed=seed, config=config or GossipConfig())
        for i in range(1, n + 1):
            await cluster.start(f"n{i}", seeds=[] if i == 1 else ["n1"])
        yield cluster
        nursery.cancel_scope.cancel()
