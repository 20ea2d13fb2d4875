"""Real peer processes for the abuse tier: a cluster with data dirs, its health, and what to measure.

A :class:`Cluster` starts N ``gossipkv peer`` processes on free loopback ports (each with its own
data dir), waits until every peer lists every other ``up`` and a partition table covering all of
them exists, and measures each peer's idle RSS after a warm-up. The samplers here watch a running
attack without ever asserting a duration: :class:`RssSampler` reads ``/proc/PID/status`` every
50 ms, :class:`MembershipWatch` polls ``members`` from every peer's view and reads the membership
events the peers log. Used by the pytest fixtures (``conftest.py``) and by ``report.py``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio
from gossipkv_cli._render import members_doc

import gossipkv

from ..proc._peers import Peers, eventually, free_ports, members

STARTUP_WITHIN = 45.0  # seconds a fresh cluster may take to form (a 2-core CI machine, busy)
WARMUP_OPS = 30  # puts and gets through each peer before its idle RSS is measured


def rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` in bytes (0 once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


@asynccontextmanager
async def client_of(*addrs: str, request_timeout: float = 10.0) -> AsyncIterator[gossipkv.Client]:
    """A well-behaved client of the listed peers (tried in order)."""
    async with gossipkv.open_client(
        list(addrs), connect_timeout=2.0, request_timeout=request_timeout
    ) as c:
        yield c


async def stats_of(addr: str) -> dict[str, Any] | None:
    """The ``stats --json`` document of one peer, or ``None`` if it does not answer."""
    try:
        async with client_of(addr, request_timeout=5.0) as c:
            return asdict(await c.statistics())
    except gossipkv.GossipKVError:
        return None


class Cluster:
    """``size`` peer processes named ``<prefix>1..`` with data dirs under ``root``.

    The first peer founds the cluster; the others (and every restarted peer) seed the live ones.
    """

    def __init__(self, root: Path, size: int, *, prefix: str = "p") -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.names = [f"{prefix}{i + 1}" for i in range(size)]
        self.peers = Peers(root)
        self.ports = dict(zip(self.names, free_ports(size), strict=True))
        #: RSS of each peer after warm-up, before any attack (bytes).
        self.idle_rss: dict[str, int] = {}

    # --- processes ------------------------------------------------------------------------------

    def addr(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    @property
    def addrs(self) -> list[str]:
        return [self.addr(n) for n in self.names]

    def data_dir(self, name: str) -> Path:
        return self.root / name

    def pid(self, name: str) -> int:
        return self.peers.procs[name].pid

    def start_peer(self, name: str, *, seeds: list[str] | None = None) -> None:
        if seeds is None:
            seeds = [self.addr(n) for n in self.names if n != name and n in self.peers.alive()]
        self.peers.start(name, self.ports[name], seeds, data_dir=str(self.data_dir(name)))

    def start(self) -> None:
        first, *rest = self.names
        self.start_peer(first, seeds=[])
        for name in rest:
            self.start_peer(name, seeds=[self.addr(first)])

    def alive(self) -> list[str]:
        return self.peers.alive()

    def signal(self, name: str, sig: int) -> None:
        self.peers.signal(name, sig)

    async def wait_exit(self, name: str, within: float = 30.0) -> int:
        proc = self.peers.procs[name]

        async def exited() -> Any:
            return proc.poll() is not None

        await eventually(exited, within=within, what=f"{name} to exit", peers=self.peers)
        return int(proc.returncode)

    def kill_all(self) -> None:
        self.peers.kill_all()

    def log(self, name: str) -> str:
        return self.peers.log(name)

    # --- readiness and health -------------------------------------------------------------------

    async def wait_ready(self, within: float = STARTUP_WITHIN) -> None:
        """Every peer lists every peer ``up`` and reachable, every peer's partition table has all
        of them as owners, and a quorum read answers through every peer."""
        names = sorted(self.names)

        async def formed() -> Any:
            for name in self.names:
                doc = await members(self.addr(name))
                if doc is None:
                    return False
                ups = sorted(
                    m["name"] for m in doc["members"] if m["status"] == "up" and m["reachable"]
                )
                if ups != names:
                    return False
                st = await stats_of(self.addr(name))
                if st is None or not st["partitions"] or sorted(st["partitions_owned"]) != names:
                    return False
            return True

        await eventually(formed, within=within, what="cluster formed", peers=self.peers)

        async def reads() -> Any:
            try:
                for addr in self.addrs:
                    async with client_of(addr, request_timeout=3.0) as c:
                        await c.get("probe", r=3)
            except gossipkv.GossipKVError:
                return False
            return True

        await eventually(reads, within=within, what="quorum reads answer", peers=self.peers)

    async def warm_up_and_measure(self) -> None:
        """Exercise the data path through every peer, then record each one's idle RSS."""
        for addr in self.addrs:
            async with client_of(addr) as c:
                for i in range(WARMUP_OPS):
                    await c.put(f"warmup-{i}", {"n": i, "pad": "x" * 200})
                    await c.get(f"warmup-{i}")
                await c.statistics()
                await c.members()
        await trio.sleep(0.3)  # let replication and read repair of the warm-up settle
        samples: dict[str, list[int]] = {n: [] for n in self.names}
        for _ in range(5):
            for name in self.names:
                samples[name].append(rss_bytes(self.pid(name)))
            await trio.sleep(0.1)
        self.idle_rss = {n: sorted(s)[len(s) // 2] for n, s in samples.items()}

    def health_problems(self, bloat: float) -> list[str]:
        """Why this cluster should not be reused by the next test (empty: reusable)."""
        problems = [f"{n} exited" for n in self.names if n not in self.alive()]
        for name in self.alive():
            rss = rss_bytes(self.pid(name))
            if rss > bloat * self.idle_rss.get(name, rss):
                problems.append(f"{name} RSS {mib(rss)} vs idle {mib(self.idle_rss[name])}")
        return problems

    async def is_formed(self) -> bool:
        try:
            await self.wait_ready(within=3.0)
        except AssertionError:
            return False
        return True

    # --- restarts -------------------------------------------------------------------------------

    async def restart_gracefully(self, name: str) -> int:
        """SIGTERM (a graceful leave), wait for the exit, start it again on the same data dir and
        wait until the cluster has formed again. Returns the old process's exit code."""
        self.signal(name, signal.SIGTERM)
        code = await self.wait_exit(name)
        self.start_peer(name)
        await self.wait_ready()
        return code

    async def restart_gracefully_alone(self, name: str) -> int:
        """SIGTERM, wait for the exit and start it again on the same data dir, without waiting
        for the cluster to form (another peer may be frozen). Returns the old exit code."""
        self.signal(name, signal.SIGTERM)
        code = await self.wait_exit(name)
        self.start_peer(name)
        return code

    async def restart_crashed(self, name: str) -> None:
        """SIGKILL, then start it again on the same data dir; wait until the cluster formed."""
        self.signal(name, signal.SIGKILL)
        await self.wait_exit(name)
        self.start_peer(name)
        await self.wait_ready()

    async def restart_all_crashed(self) -> None:
        """SIGKILL every peer, then start them all again on their data dirs (the first one
        re-founds the cluster from its persisted decisions, the others seed it)."""
        for name in self.alive():
            self.signal(name, signal.SIGKILL)
        for name in self.names:
            await self.wait_exit(name)
        self.start()
        await self.wait_ready()

    # --- counters -------------------------------------------------------------------------------

    async def stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in self.names:
            doc = await stats_of(self.addr(name))
            out[name] = doc if doc is not None else {}
        return out

    def log_mark(self) -> dict[str, int]:
        return {n: len(self.log(n)) for n in self.names}

    def log_since(self, mark: dict[str, int]) -> dict[str, str]:
        return {n: self.log(n)[mark.get(n, 0) :] for n in self.names}


def counter_total(stats: dict[str, dict[str, Any]], section: str, reason: str) -> int:
    """``stats[peer][section][reason]`` summed over the peers (0 where absent)."""
    total = 0
    for doc in stats.values():
        value = doc.get(section)
        if isinstance(value, dict):
            total += int(value.get(reason, 0) or 0)
    return total


# --- samplers ------------------------------------------------------------------------------------


@dataclass
class RssSampler:
    """Peak VmRSS of each peer, sampled every ``period`` seconds while it runs."""

    pids: dict[str, int]
    period: float = 0.05
    peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.peak[name] = max(self.peak.get(name, 0), rss_bytes(pid))
        self.samples += 1

    async def run(self) -> None:
        while True:
            self.sample()
            await trio.sleep(self.period)

    @contextmanager
    def in_thread(self) -> Iterator[RssSampler]:
        """Sample from a thread for the duration of the block (across several ``trio.run``s)."""
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                self.sample()
                stop.wait(self.period)

        thread = threading.Thread(target=loop, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join()
            self.sample()


@dataclass
class MembershipWatch:
    """What each peer said about the others while it ran: downs, unreachables and leaders.

    A peer that does not answer a poll (it may be the one under attack) is counted in
    ``unanswered``; only a peer that answers can report a false down.
    """

    cluster: Cluster
    period: float = 0.2
    downs: set[tuple[str, str, str]] = field(default_factory=set)
    leaders: dict[str, set[str | None]] = field(default_factory=dict)
    unanswered: dict[str, int] = field(default_factory=dict)
    polls: int = 0

    async def _poll_one(self, name: str, client: gossipkv.Client) -> None:
        expected = set(self.cluster.names)
        while True:
            try:
                with trio.fail_after(2.0):
                    doc = members_doc(await client.members())
            except (gossipkv.GossipKVError, trio.TooSlowError):
                self.unanswered[name] = self.unanswered.get(name, 0) + 1
            else:
                self.polls += 1
                self.leaders.setdefault(name, set()).add(doc.get("leader"))  # type: ignore[arg-type]
                for m in doc["members"]:  # type: ignore[union-attr]
                    if m["name"] not in expected:
                        continue
                    if m["status"] in ("down", "removed") or not m["reachable"]:
                        self.downs.add(
                            (name, m["name"], f"{m['status']}/reachable={m['reachable']}")
                        )
            await trio.sleep(self.period)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            for name in self.cluster.names:
                nursery.start_soon(self._run_one, name)

    async def _run_one(self, name: str) -> None:
        while True:
            try:
                async with client_of(self.cluster.addr(name), request_timeout=2.0) as c:
                    await self._poll_one(name, c)
            except gossipkv.GossipKVError:
                self.unanswered[name] = self.unanswered.get(name, 0) + 1
                await trio.sleep(self.period)


def logged_events(text: str, kinds: tuple[str, ...] = ("down", "leader")) -> list[str]:
    """Membership event lines (``event <kind> ...``) of a peer log excerpt."""
    return [
        line.strip()
        for line in text.splitlines()
        if any(f" event {kind} " in line for kind in kinds)
    ]


@asynccontextmanager
async def observing(cluster: Cluster) -> AsyncIterator[Observation]:
    """Sample RSS and membership of ``cluster`` for the duration of the block."""
    obs = Observation(
        RssSampler({n: cluster.pid(n) for n in cluster.alive()}),
        MembershipWatch(cluster),
        cluster.log_mark(),
    )
    async with trio.open_nursery() as nursery:
        obs.rss.sample()
        nursery.start_soon(obs.rss.run)
        nursery.start_soon(obs.members.run)
        try:
            yield obs
        finally:
            obs.rss.sample()
            obs.events = {
                n: logged_events(text) for n, text in cluster.log_since(obs.log_mark).items()
            }
            nursery.cancel_scope.cancel()


@dataclass
class Observation:
    rss: RssSampler
    members: MembershipWatch
    log_mark: dict[str, int]
    events: dict[str, list[str]] = field(default_factory=dict)


class ClusterPool:
    """One cluster shared by the tests of a module, replaced by a fresh one when a test left it
    unusable (a peer exited, is not up everywhere, or kept the memory an attack made it take)."""

    def __init__(self, root: Path, size: int, *, bloat: float) -> None:
        self.root = root
        self.size = size
        self.bloat = bloat
        self.current: Cluster | None = None
        self.started = 0

    def get(self) -> Cluster:
        """A formed, warmed-up cluster (call from sync code: it runs its own ``trio.run``)."""
        cluster = self.current
        if cluster is not None:
            problems = cluster.health_problems(self.bloat)
            if not problems and trio.run(cluster.is_formed):
                return cluster
            print(f"\n[abuse] replacing the cluster: {problems or ['not formed']}")
            cluster.kill_all()
            self.current = None
        self.started += 1
        cluster = Cluster(self.root / f"cluster{self.started}", self.size)
        cluster.start()
        try:
            trio.run(cluster.wait_ready)
            trio.run(cluster.warm_up_and_measure)
        except BaseException:
            cluster.kill_all()
            raise
        self.current = cluster
        return cluster

    def discard(self) -> None:
        """The next :meth:`get` starts a fresh cluster."""
        if self.current is not None:
            self.current.kill_all()
            self.current = None

    def close(self) -> None:
        self.discard()
