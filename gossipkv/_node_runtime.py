"""The node runtime: the parts one peer is made of, built in dependency order, and its life.

:class:`NodeRuntime` is the composition root behind the :class:`~gossipkv.Node` facade. It makes
each part once and hands it what it needs (mostly callables: the membership core, the nursery
and the data path exist only while the node runs): the connection pool and its request router,
the membership loops, subscriptions, the incarnation's record, the operator's calls and toolbox,
and the decommission. :meth:`NodeRuntime.run` is the node's life: open the storage, bind, plan
and persist the new incarnation (Generation Clock), start the data path and the loops, serve,
and on the way out close what it opened.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from . import _admin, _wallclock
from ._connections import ConnectionTable
from ._decommission import Decommission
from ._errors import ConfigError, NodeClosedError, Unavailable, single_error
from ._handlers import RequestHandlers
from ._hlc import HybridClock
from ._incarnation import Incarnation, plan_start
from ._kv import KeyValueService
from ._membership_runtime import MembershipRuntime
from ._messages import PROTOCOL_VERSION, Hello
from ._node_config import NodeConfig, effective_config
from ._node_statistics import node_statistics
from ._operator import Operator
from ._outbox import TransportCounters
from ._persist import FileNodeStore, NodeStore, PeerRecord
from ._pool import ConnectionPool
from ._router import Router
from ._statistics import NodeStatistics
from ._subscriptions import Subscriptions
from ._toolbox import Toolbox
from ._types import Address
from .membership._gossiper import Gossiper
from .storage import StorageEngine, open_storage
from .transport._base import ReceiveBudget

log = logging.getLogger("gossipkv.node")


@dataclass(slots=True)
class Running:
    """What exists only while the node runs."""

    gossiper: Gossiper
    nursery: trio.Nursery
    address: str


class NodeRuntime:
    """One peer's parts and life (see the module docstring).

    Args:
      settings: the node's configuration (checked already).
    """

    def __init__(self, settings: NodeConfig) -> None:
        self.settings = settings
        self.config = config = settings.config
        limits = settings.limits
        self._storage_limits = settings.storage_limits
        request_timeout = settings.request_timeout
        connect_timeout = settings.connect_timeout
        transport = settings.transport
        if transport is None:
            from .transport._tcp import TcpTransport

            transport = TcpTransport(max_frame=limits.max_frame, tls=settings.tls)
        # Identities come from certificates when the transport speaks TLS (issue 13).
        self.tls = getattr(transport, "tls", None) is not None
        # The frame deadline and the receive budget are enforced where frames are read.
        transport.frame_timeout = limits.frame_timeout
        transport.receive_budget = ReceiveBudget(limits.max_receive_buffer)
        self.transport = transport
        self._rng = settings.rng if settings.rng is not None else random.Random()
        self._wall = settings.wall_clock if settings.wall_clock is not None else _wallclock.wall_ms
        self.hlc = HybridClock(self._wall)
        data_dir = settings.data_dir
        self._store: NodeStore = (
            settings.store
            if settings.store is not None
            else FileNodeStore(data_dir)
            if data_dir
            else NodeStore()
        )
        self._running: Running | None = None
        self.kv: KeyValueService | None = None
        self.stopped = False
        # What this node refused to protect itself, by reason (limits on connections, frames,
        # subscriptions and writes; the data path adds its own).
        self._refusals: Counter[str] = Counter()
        self.counters = TransportCounters(self._refusals)
        self.conns = ConnectionTable(limits, self._refusals)
        self._changed = trio.Event()
        self._ready = trio.Event()
        log_limit = LogLimiter(60.0)
        #: Membership events, key watches and log monitors, local and remote.
        self.subs = Subscriptions(
            limits=self._storage_limits,
            conns=self.conns,
            dropped=self.counters.dropped,
            log_fanout=_admin.LogFanout(),
        )
        #: This incarnation's record, and the guard on a replica back from a long absence.
        self.incarnation = Incarnation(
            gossiper=self.gossiper,
            kv=lambda: self.kv,
            service=self.service,
            nursery=self.nursery,
            store=self._store,
            wall=self._wall,
            tombstone_grace=settings.kv.tombstone_grace,
        )
        # The parts below dial through the connection pool, which is made after the router
        # that answers its connections: they reach it when they dial.
        #: The operator's read-only views.
        self.toolbox = Toolbox(
            gossiper=self.gossiper,
            service=self.service,
            channel_to=lambda address: self.pool.channel_to(address),
            storage_limits=self._storage_limits,
            replicas=config.replicas,
            ping_timeout=request_timeout + connect_timeout,
        )
        #: The operator's calls: remove, replace, snapshot.
        self.operator = Operator(
            gossiper=self.gossiper,
            data_service=self.data_service,
            send_to_member=lambda member, message: self.pool.send_to_member(member, message),
            channel_to=lambda address: self.pool.channel_to(address),
            wall=self._wall,
            request_timeout=request_timeout,
            data_dir=data_dir,
            publish_events=lambda: self.membership.publish_events(),
            persist=self.incarnation.save,
        )
        #: Hand-off, leave and stop.
        self.decommission = Decommission(
            gossiper=self.gossiper,
            service=self.service,
            nursery=self.nursery,
            config=config,
            next_evaluation=self.next_evaluation,
            channel_to=lambda address: self.pool.channel_to(address),
        )
        handlers = RequestHandlers(
            gossiper=self.gossiper,
            nursery=self.nursery,
            hlc=self.hlc,
            transport=transport,
            service=self.service,
            data_service=self.data_service,
            checking=lambda: self.incarnation.checking,
            subscriptions=self.subs,
            statistics=self.statistics,
            effective_config=self.effective_config,
            reload_tls=self.reload_tls,
            toolbox=self.toolbox,
            operator=self.operator,
            decommission=self.decommission,
            probe=lambda request: self.membership.serve_probe(request),
            request_timeout=request_timeout,
        )
        #: Every message this peer accepts, who may send it and what answers it.
        self.router = Router(
            handlers.table(), gate=transport.wait_runnable, dropped=self.counters.dropped
        )
        #: One channel per peer address, dialled on demand, and every inbound connection.
        self.pool: ConnectionPool = ConnectionPool(
            transport=transport,
            limits=limits,
            conns=self.conns,
            counters=self.counters,
            refusals=self._refusals,
            hlc=self.hlc,
            router=self.router,
            tls=self.tls,
            hello=self._hello,
            own_name=lambda: self.gossiper().node_id,
            joining=lambda: (
                self._running is not None and self._running.gossiper.status == "joining"
            ),
            gossiper=self.gossiper,
            nursery=self.nursery,
            ready=self._ready,
            log_limit=log_limit,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
            on_lost=self._lost_contact,
        )
        #: The gossip and evaluation loops around the membership core.
        self.membership: MembershipRuntime = MembershipRuntime(
            gossiper=self.gossiper,
            nursery=self.nursery,
            kv=lambda: self.kv,
            transport=transport,
            channel_to=self.pool.channel_to,
            connected=self.pool.connected,
            hlc=self.hlc,
            rng=self._rng,
            wall=self._wall,
            interval=config.gossip_interval,
            request_timeout=request_timeout,
            log_limit=log_limit,
            dropped=self.counters.dropped,
            publish=self.subs.publish,
            persist=self.incarnation.save,
            wipe=self.incarnation.wipe,
            tend_data=self.incarnation.tend,
            evaluated=self._evaluated,
        )

    # --- what exists while it runs ---------------------------------------------------------------

    def running(self) -> Running:
        """The running node's core, nursery and address.

        Raises:
          NodeClosedError: the node is not running.
        """
        if self._running is None:
            raise NodeClosedError("node is not running (use open_node or nursery.start(node.run))")
        return self._running

    def _lost_contact(self, node_id: str) -> None:
        if self._running is not None and not self.stopped:
            self.membership.lost_contact(node_id)

    def gossiper(self) -> Gossiper:
        """The membership core (see :meth:`running`)."""
        return self.running().gossiper

    def nursery(self) -> trio.Nursery:
        """The node's nursery (see :meth:`running`)."""
        return self.running().nursery

    def service(self) -> KeyValueService:
        """The data path.

        Raises:
          NodeClosedError: the node is not running, or has stopped.
        """
        self.running()
        if self.stopped:
            raise NodeClosedError("node has stopped")
        assert self.kv is not None
        return self.kv

    def data_service(self) -> KeyValueService:
        """The data path, refused while this member checks whether its replica is stale.

        Raises:
          Unavailable: it checks.
          NodeClosedError: as :meth:`service`.
        """
        kv = self.service()
        if self.incarnation.checking:
            raise Unavailable(
                f"{self.gossiper().node_id} is back after more than tombstone_grace away and "
                "checks its data with the cluster before serving it; retry shortly"
            )
        return kv

    async def next_evaluation(self) -> None:
        """Wait for the membership core's next evaluation."""
        await self._changed.wait()

    def _evaluated(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def statistics(self) -> NodeStatistics:
        """The node's statistics snapshot (see :meth:`Node.statistics`)."""
        running = self.running()
        return node_statistics(
            g=running.gossiper,
            kv=self.service(),
            config=self.config,
            address=running.address,
            counters=self.counters,
            conns=self.conns,
            lag=self.membership.lag,
            gossip_latency=self.membership.gossip_latency,
            leave=self.decommission.progress,
            wiped=self.incarnation.wiped,
            now=trio.current_time(),
        )

    def effective_config(self) -> dict[str, object]:
        """The configuration as a plain map (see :meth:`Node.effective_config`)."""
        running = self._running
        return effective_config(
            self.settings,
            name=running.gossiper.node_id if running is not None else self.settings.name,
            address=running.address if running is not None else None,
            tls=self.tls,
        )

    def reload_tls(self) -> None:
        """Read the TLS files again (see :meth:`Node.reload_tls`).

        Raises:
          ConfigError: no TLS, or the files do not load.
        """
        reload = getattr(self.transport, "reload_tls", None)
        if not self.tls or reload is None:
            raise ConfigError("TLS is not enabled on this peer")
        reload()
        log.info("reloaded the TLS certificate and CA bundle")

    def _hello(self) -> Hello:
        running = self.running()
        g = running.gossiper
        return Hello(
            PROTOCOL_VERSION,
            self.config.cluster,
            g.node_id,
            g.generation,
            running.address,
            hlc=self.hlc.now(),
        )

    # --- its life --------------------------------------------------------------------------------

    async def run(self, started: Callable[[], None]) -> None:
        """Run until the node leaves or is cancelled; ``started()`` once it serves (see
        :meth:`Node.run`).

        Raises:
          DataDirError: the data dir is unusable or locked by another process.
          TransportError: the listen address cannot be bound.
          RuntimeError: it ran once already.
        """
        if self._running is not None:
            raise RuntimeError("a Node can only run once; create a new one to restart")
        record = await self._store.open()
        try:
            async with contextlib.AsyncExitStack() as stack:
                storage = self.settings.storage
                if storage is None:
                    storage = await stack.enter_async_context(self._open_storage("data"))
                hints = self.settings.hints
                if hints is None:
                    hints = await stack.enter_async_context(self._open_storage("hints"))
                await self._run(record, storage, hints, started)
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group
        finally:
            self.stopped = True
            self.decommission.stopped()
            self.subs.close()
            with trio.move_on_after(2.0, shield=True):
                await self._store.close()

    def _open_storage(self, name: str) -> contextlib.AbstractAsyncContextManager[StorageEngine]:
        data_dir = self.settings.data_dir
        return open_storage(
            None if data_dir is None else Path(data_dir) / name,
            fsync=self.settings.fsync,
            limits=self._storage_limits,
        )

    async def _run(
        self,
        record: PeerRecord | None,
        storage: StorageEngine,
        hints: StorageEngine,
        started: Callable[[], None],
    ) -> None:
        # Inline, not in a thread: listing /proc/self/fd touches no disk, and waiting for a
        # thread would let a simulation's MockClock jump while this node starts.
        self.conns.fit_descriptor_limit(*_descriptor_use())
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                self.transport.serve, self.settings.listen, self.pool.handle_connection
            )
            address = self.settings.advertise or _advertised(bound)
            start = plan_start(self.settings, record, address, self._wall())
            # Generation Clock: the new generation is durable before the first gossip.
            await self._store.save(start.record)
            name, decisions, seeds = start.name, start.decisions, start.seeds
            gossiper = Gossiper(
                self.config,
                node_id=name,
                address=address,
                generation=start.generation,
                seeds=seeds,
                now=trio.current_time(),
                decisions=decisions,
                bootstrap=start.bootstrap,
                replaces=self.settings.replace,
            )
            self._running = Running(gossiper, nursery, address)
            self.kv = KeyValueService(
                node_id=name,
                storage=storage,
                hints=hints,
                table=gossiper.table,
                reachable=gossiper.reachable_members,
                send=self.pool.send_to_member,
                start=self.pool.start_to_member,
                rng=self._rng,
                config=self.settings.kv,
                limits=self._storage_limits,
                stamp=self.hlc.now,
                refusals=self._refusals,
                queued_bytes=lambda: self.counters.queued_bytes,
                known_table=decisions.table if decisions is not None else None,
                gone=gossiper.is_gone,
                wall_ms=self._wall,
            )
            self.kv.reaper.pulling = gossiper.pulling
            self.kv.reaper.gone = gossiper.is_gone
            self.kv.on_change = self.subs.on_change
            self.counters.on_drain = self.kv.admission.wake
            if self.incarnation.begin(self.kv, record, rejoins=bool(seeds)):
                await nursery.start(self.kv.run)
            self._ready.set()
            if gossiper.decisions_dirty:
                await self.incarnation.save()
            if gossiper.replaces is not None:
                await self.operator.claim_replacement(gossiper.replaces, seeds)
            nursery.start_soon(self.membership.gossip_loop)
            nursery.start_soon(self.membership.evaluate_loop)
            log.info(
                "%s listening on %s (generation %d, %s)",
                name,
                address,
                start.generation,
                "new cluster" if start.bootstrap else f"joining via {', '.join(seeds) or 'nobody'}",
            )
            started()


class LogLimiter:
    """Lets a repeated log line through once per ``interval`` seconds per key (a bounded set of
    keys: the oldest is forgotten first), so a peer that is refused or refuses five times a
    second says so once a minute."""

    def __init__(self, interval: float, max_keys: int = 1024) -> None:
        self._interval = interval
        self._max_keys = max_keys
        self._last: dict[object, float] = {}

    def allow(self, key: object, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._last.pop(key, None)
        self._last[key] = now
        if len(self._last) > self._max_keys:
            del self._last[next(iter(self._last))]
        return True


def _descriptor_use() -> tuple[int | None, int]:
    """The soft ``RLIMIT_NOFILE`` (``None``: unlimited or unknown) and the descriptors open now."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return None, 0
    try:
        open_fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_fds = 0
    return (None if soft == resource.RLIM_INFINITY else soft), open_fds


def _advertised(bound: str) -> str:
    addr = Address.parse(bound)
    if addr.host in ("0.0.0.0", "::", ""):
        return str(Address("127.0.0.1", addr.port))
    return str(addr)
