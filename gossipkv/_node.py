"""The node runtime: owns the nursery, the connections and the loops around the sans-IO core.

A :class:`Node` binds its listen address, derives its generation (Generation Clock) from the data
dir and the wall clock, then runs: the gossip loop (one scuttlebutt round every
``gossip_interval``), the evaluation loop (failure detection, leader duties, persistence; the lag
of its own wake-ups is the event-loop lag the local-pause guard reads), and one task per
connection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Unpack

import trio

from . import _admin, _wallclock
from ._connections import ConnectionTable
from ._decommission import Decommission
from ._errors import (
    ConfigError,
    InvalidArgument,
    NodeClosedError,
    Unavailable,
    single_error,
)
from ._handlers import RequestHandlers
from ._hlc import HybridClock
from ._incarnation import Incarnation, plan_start
from ._kv import Change, GetResult, KeyValueService, PutResult
from ._membership_runtime import MembershipRuntime
from ._messages import (
    PROTOCOL_VERSION,
    Hello,
)
from ._node_config import NodeConfig, NodeOptions, effective_config, node_config
from ._node_statistics import node_statistics
from ._operator import Operator
from ._peer import TransportCounters
from ._persist import FileNodeStore, NodeStore, PeerRecord
from ._pool import ConnectionPool
from ._router import Router
from ._statistics import NodeStatistics as NodeStatistics
from ._subscriptions import Subscriptions
from ._toolbox import Toolbox
from ._types import Address
from .membership._gossiper import Gossiper, MembershipEvent, MemberView
from .storage import StorageEngine, open_storage
from .transport._base import ReceiveBudget

log = logging.getLogger("gossipkv.node")


@dataclass(slots=True)
class _Runtime:
    gossiper: Gossiper
    nursery: trio.Nursery
    address: str


class Node:
    """One gossipkv peer. Create it with :func:`open_node`, or run it in your own nursery::

        node = Node(name="a", listen="127.0.0.1:7400")
        await nursery.start(node.run)

    Args:
      settings: the whole configuration (:class:`NodeConfig`; default: ``NodeConfig()``).
      **overrides: fields of :class:`NodeConfig` that replace those of ``settings``
        (``Node(name="a", listen=...)`` is ``Node(NodeConfig(name="a", listen=...))``).

    Attributes:
      settings: the configuration in force (:class:`NodeConfig`).
      config: the membership settings in force (``settings.config``).
      kv_config: the data-path settings in force (``settings.kv``).
      limits: the network limits in force (``settings.limits``).

    Raises:
      ConfigError: at construction, for a bad address, seed list or setting.

    Until the node serves, its properties, :meth:`members`, :meth:`leader`, :meth:`statistics`,
    :meth:`set_metadata` and the data path raise :exc:`NodeClosedError`.
    """

    def __init__(
        self, settings: NodeConfig | None = None, /, **overrides: Unpack[NodeOptions]
    ) -> None:
        settings = node_config(settings, overrides)
        self.settings = settings
        self.config = settings.config
        self.kv_config = settings.kv
        self.limits = settings.limits
        self._limits = settings.storage_limits
        self._kv: KeyValueService | None = None
        request_timeout = settings.request_timeout
        connect_timeout = settings.connect_timeout
        transport = settings.transport
        if transport is None:
            from .transport._tcp import TcpTransport

            transport = TcpTransport(max_frame=self.limits.max_frame, tls=settings.tls)
        # Identities come from certificates when the transport speaks TLS (issue 13).
        self._tls = getattr(transport, "tls", None) is not None
        # The frame deadline and the receive budget are enforced where frames are read.
        transport.frame_timeout = self.limits.frame_timeout
        transport.receive_budget = ReceiveBudget(self.limits.max_receive_buffer)
        self._transport = transport
        self._rng = settings.rng if settings.rng is not None else random.Random()
        self._wall = settings.wall_clock if settings.wall_clock is not None else _wallclock.wall_ms
        self._hlc = HybridClock(self._wall)
        data_dir = settings.data_dir
        self._store: NodeStore = (
            settings.store
            if settings.store is not None
            else FileNodeStore(data_dir)
            if data_dir
            else NodeStore()
        )
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._rt: _Runtime | None = None
        # What this node refused to protect itself, by reason (limits on connections, frames,
        # subscriptions and writes; the data path adds its own).
        self._refusals: Counter[str] = Counter()
        self._counters = TransportCounters(self._refusals)
        self._conns = ConnectionTable(self.limits, self._refusals)
        self._changed = trio.Event()
        self._ready = trio.Event()
        self._stopped = False
        self._log_limit = LogLimiter(60.0)
        self._log_fanout = _admin.LogFanout()
        gossiper = lambda: self._runtime().gossiper  # noqa: E731 (each part asks when it needs)
        nursery = lambda: self._runtime().nursery  # noqa: E731
        #: Membership events, key watches and log monitors, local and remote.
        self._subs = Subscriptions(
            limits=self._limits,
            conns=self._conns,
            dropped=self._counters.dropped,
            log_fanout=self._log_fanout,
        )
        #: This incarnation's record, and the guard on a replica back from a long absence.
        self._incarnation = Incarnation(
            gossiper=gossiper,
            kv=lambda: self._kv,
            service=self._service,
            nursery=nursery,
            store=self._store,
            wall=self._wall,
            tombstone_grace=self.kv_config.tombstone_grace,
        )
        # The parts below dial through the connection pool, which is made after the router
        # that answers its connections: they reach it when they dial.
        #: The operator's read-only views.
        self._toolbox = Toolbox(
            gossiper=gossiper,
            service=self._service,
            channel_to=lambda address: self._pool.channel_to(address),
            storage_limits=self._limits,
            replicas=self.config.replicas,
            ping_timeout=request_timeout + connect_timeout,
        )
        #: The operator's calls: remove, replace, snapshot.
        self._operator = Operator(
            gossiper=gossiper,
            data_service=self._data_service,
            send_to_member=lambda member, message: self._pool.send_to_member(member, message),
            channel_to=lambda address: self._pool.channel_to(address),
            wall=self._wall,
            request_timeout=request_timeout,
            data_dir=settings.data_dir,
            publish_events=lambda: self._membership.publish_events(),
            persist=self._incarnation.save,
        )
        #: Hand-off, leave and stop.
        self._decommission = Decommission(
            gossiper=gossiper,
            service=self._service,
            nursery=nursery,
            config=self.config,
            next_evaluation=self._next_evaluation,
            channel_to=lambda address: self._pool.channel_to(address),
        )
        handlers = RequestHandlers(
            gossiper=gossiper,
            nursery=nursery,
            hlc=self._hlc,
            transport=transport,
            service=self._service,
            data_service=self._data_service,
            checking=lambda: self._incarnation.checking,
            subscriptions=self._subs,
            statistics=self.statistics,
            effective_config=self.effective_config,
            reload_tls=self.reload_tls,
            toolbox=self._toolbox,
            operator=self._operator,
            decommission=self._decommission,
            request_timeout=request_timeout,
        )
        #: Every message this peer accepts, who may send it and what answers it.
        #: Every message this peer accepts, who may send it and what answers it.
        self._router = Router(
            handlers.table(), gate=transport.wait_runnable, dropped=self._counters.dropped
        )
        #: One channel per peer address, dialled on demand, and every inbound connection.
        self._pool: ConnectionPool = ConnectionPool(
            transport=transport,
            limits=self.limits,
            conns=self._conns,
            counters=self._counters,
            refusals=self._refusals,
            hlc=self._hlc,
            router=self._router,
            tls=self._tls,
            hello=self._hello,
            own_name=lambda: self.name,
            joining=lambda: self._rt is not None and self._rt.gossiper.status == "joining",
            gossiper=gossiper,
            nursery=nursery,
            ready=self._ready,
            log_limit=self._log_limit,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
        )
        #: The gossip and evaluation loops around the membership core.
        self._membership: MembershipRuntime = MembershipRuntime(
            gossiper=gossiper,
            nursery=nursery,
            kv=lambda: self._kv,
            transport=transport,
            channel_to=self._pool.channel_to,
            hlc=self._hlc,
            rng=self._rng,
            wall=self._wall,
            interval=self.config.gossip_interval,
            request_timeout=request_timeout,
            log_limit=self._log_limit,
            dropped=self._counters.dropped,
            publish=self._subs.publish,
            persist=self._incarnation.save,
            wipe=self._incarnation.wipe,
            tend_data=self._incarnation.tend,
            evaluated=self._evaluated,
        )

    # --- public surface ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This node's name (given, persisted or its advertised address; see :class:`Node`)."""
        return self._runtime().gossiper.node_id

    @property
    def address(self) -> str:
        """The address this node advertises (the bound one when ``listen`` used port 0)."""
        return self._runtime().address

    @property
    def generation(self) -> int:
        """This incarnation's generation: ``max(persisted + 1, wall-clock ms)`` at start.

        A restarted node has a higher generation, which replaces its old incarnation everywhere.
        """
        return self._runtime().gossiper.generation

    @property
    def status(self) -> str:
        """This node's own lifecycle status: ``joining``, ``up``, ``leaving`` or ``left``."""
        return self._runtime().gossiper.status

    def members(self) -> list[MemberView]:
        """This node's membership table, sorted by name, this node included.

        Returns:
          One :class:`MemberView` per member this node knows of, removed incarnations included
          (``status == "removed"``). ``reachable`` and ``phi`` are this node's own opinion.
        """
        return self._runtime().gossiper.members(trio.current_time())

    def leader(self) -> str | None:
        """The emergent leader as this node sees it.

        Returns:
          The name of the oldest member (by ``up_number``, then generation, then name) that is up
          (or leaving) and reachable from here, or ``None`` when there is none yet. Two sides of a partition
          may each see their own.
        """
        return self._runtime().gossiper.leader()

    def converged(self) -> bool:
        """Whether every reachable up member publishes the same membership view as this node
        and none is suspect (the leader admits and removes members only then)."""
        return self._runtime().gossiper.converged()

    def set_metadata(self, key: str, value: str | None) -> None:
        """Publish (``None``: delete) a metadata key that every peer will see for this member.

        The change spreads by gossip: other members see it in :attr:`MemberView.metadata` within a
        few gossip rounds.

        Args:
          key: 1..128 characters.
          value: a string of at most ``GossipConfig.max_metadata_bytes`` UTF-8 bytes, or ``None``
            to delete the key.

        Raises:
          InvalidArgument: key or value over the limits, or more than ``max_metadata_keys`` keys
            (a :exc:`ValueError`).
          NodeClosedError: the node is not running.
        """
        try:
            self._runtime().gossiper.set_metadata(key, value)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key``: the live siblings and the causal context covering them.

        The read asks every replica of the key (up to N) and returns once R answered; replicas that
        answered with an older state are repaired afterwards (before returning with
        ``KVConfig(blocking_read_repair=True)``).

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          r: replies to wait for (default ``0``: ``KVConfig.r``); 1..N.
          local: read only this node's own replica (no quorum, no repair).

        Returns:
          A :class:`GetResult`: ``values`` holds the live siblings (empty when ``found`` is False)
          and ``context`` the causal context to pass to the next :meth:`put` of this key.

        Raises:
          ClusterNotReady: no partition table yet (safe to retry).
          QuorumNotReached: fewer than R replicas answered within ``KVConfig.replica_timeout``.
          InvalidKey: ``key`` is not a non-empty string (:exc:`KeyTooLarge`: too long).
          StorageError: this node's own storage failed.
          InvalidArgument: ``r`` is not between 1 and N (a :exc:`ValueError`).
          NodeClosedError: the node is not running.
        """
        return await self._data_service().get(key, r=r, local=local)

    async def put(
        self, key: str, value: object, *, context: bytes | None = None, w: int = 0
    ) -> PutResult:
        """Write ``value``; with the ``context`` of a read it replaces exactly what that read saw.

        Without a context nothing is overwritten: concurrent writes become siblings. The write is
        executed by a replica of the key (this node, or the first reachable replica it forwards
        to) and acknowledged once W replicas stored it under their fsync policy. An unreachable
        owner is stood in for by another member, which keeps a hint and hands the value over
        later (sloppy quorum).

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          value: any CBOR-encodable value of at most 1 MiB encoded (``None`` included; deletes
            are :meth:`delete`).
          context: the ``context`` of an earlier read or write of ``key``; ``None`` or ``b""``
            for none.
          w: replicas that must store it (default ``0``: ``KVConfig.w``); 1..N.

        Returns:
          A :class:`PutResult`: the siblings now stored at the coordinating replica and their
          context.

        Raises:
          QuorumNotReached: fewer than W replicas stored it (it may still be stored on some).
          ClusterNotReady: no partition table yet (safe to retry).
          Unavailable: no replica of the key is reachable.
          TooManySiblings: the key would hold more than 100 siblings: resolve them with a context.
          ValueTooLarge: ``value`` is over the limit once encoded.
          ValueNotEncodable: ``value`` cannot be encoded as CBOR.
          InvalidContext: ``context`` did not come from a gossipkv read or write.
          InvalidKey: ``key`` is not a non-empty string (:exc:`KeyTooLarge`: too long).
          StorageError: the coordinating replica's own storage failed.
          TransportError: the replica this node forwarded the write to could not be reached.
          InvalidArgument: ``w`` is not between 1 and N (a :exc:`ValueError`).
          NodeClosedError: the node is not running.
        """
        return await self._data_service().put(key, value, context=context, w=w)

    async def delete(self, key: str, *, context: bytes | None = None, w: int = 0) -> PutResult:
        """Delete ``key`` by writing a tombstone (a sibling like any other, hidden by reads).

        Pass the ``context`` of a read so the tombstone replaces what that read saw; without one
        the tombstone is concurrent with every stored value, which stays visible.
        The tombstone is reaped ``KVConfig.tombstone_grace`` after it was written, once every
        owner of the key holds it (see README, Operations -> Deletes).

        Args:
          key: the key to delete.
          context: the ``context`` of an earlier read of ``key``.
          w: replicas that must store the tombstone (default ``0``: ``KVConfig.w``); 1..N.

        Returns:
          A :class:`PutResult` with the live siblings still stored (none when ``context`` covered
          them all) and the new context.

        Raises:
          QuorumNotReached, ClusterNotReady, Unavailable, TooManySiblings, InvalidContext,
          InvalidKey, StorageError, TransportError, InvalidArgument, NodeClosedError: as
            :meth:`put`.
        """
        return await self._data_service().put(key, None, context=context, w=w, delete=True)

    def _service(self) -> KeyValueService:
        self._runtime()
        if self._stopped:
            raise NodeClosedError("node has stopped")
        assert self._kv is not None
        return self._kv

    def _data_service(self) -> KeyValueService:
        """The data path, refused while this member checks whether its replica is stale."""
        kv = self._service()
        if self._incarnation.checking:
            raise Unavailable(
                f"{self.name} is back after more than tombstone_grace away and checks its "
                "data with the cluster before serving it; retry shortly"
            )
        return kv

    def hlc(self) -> int:
        """A fresh hybrid logical clock timestamp (``ms << 16 | counter``), merged from peers."""
        return self._hlc.now()

    @property
    def outbound_queued_bytes(self) -> int:
        """Bytes queued for sending on all of this node's connections together (replies and
        requests not yet written): what admission control can weigh new work against."""
        return self._counters.queued_bytes

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot of this node's state and counters (what ``gossipkv stats`` shows).

        Returns:
          A new :class:`NodeStatistics`; it does not change as the node goes on.
        """
        return node_statistics(
            g=self._runtime().gossiper,
            kv=self._service(),
            config=self.config,
            address=self.address,
            counters=self._counters,
            conns=self._conns,
            lag=self._membership.lag,
            gossip_latency=self._membership.gossip_latency,
            leave=self._decommission.progress,
            wiped=self._incarnation.wiped,
            now=trio.current_time(),
        )

    async def wait_until(self, predicate: Callable[[Node], bool]) -> None:
        """Wait until ``predicate(node)`` holds; it is re-checked after every evaluation tick.

        Args:
          predicate: called with this node, often with :meth:`members` or :meth:`leader`; it must
            not block.

        There is no timeout: bound the wait with ``trio.fail_after``. An exception raised by
        ``predicate`` propagates.
        """
        while not predicate(self):
            await self._next_evaluation()

    async def wait_ready(self) -> None:
        """Wait until this node is an owner in the partition table.

        Until then the node stores no replica (its writes are coordinated by the owners), so
        :meth:`watch` sees none of them; from then on it sees the changes of every key it is a
        replica of, its own writes included. :meth:`Client.watch` sees the whole cluster.

        There is no timeout: bound the wait with ``trio.fail_after``.

        Raises:
          NodeClosedError: the node is not running.
        """
        await self.wait_until(lambda n: n._owns_partitions())

    def _owns_partitions(self) -> bool:
        table = self._runtime().gossiper.table()
        return table is not None and any(self.name in owners for owners in table.owners)

    @asynccontextmanager
    async def events(
        self, max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[MembershipEvent]]:
        """Subscribe to membership events (joins, ups, downs, leaves, removals, leader changes).

        ``async with node.events() as events: async for event in events: ...``

        Args:
          max_buffer: events held for a slow reader.

        Yields:
          A receive channel of :class:`MembershipEvent`, as this node sees them, from the time
          of subscribing. It ends when the node stops.

        A subscriber that falls ``max_buffer`` events behind loses the newest ones (counted as
        dropped frames ``events_overflow``): membership must never wait on a slow reader.
        """
        async with self._subs.events(max_buffer) as receive:
            yield receive

    @asynccontextmanager
    async def watch(
        self, prefix: str = "", max_buffer: int = 256
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Change]]:
        """Subscribe to changes this node's replica stores for keys starting with ``prefix``.

        State Watch: a :class:`Change` each time the stored state of such a key changes, from a
        local put, a replica write, read repair or hinted handoff.

        Args:
          prefix: only keys starting with it (``""``: every key).
          max_buffer: changes held for a slow reader.

        Yields:
          A receive channel of :class:`Change`; it ends when the node stops.

        Only keys this node is a replica (or stand-in) for are seen; :meth:`Client.watch` merges
        every member's stream for the whole cluster. A subscriber that falls ``max_buffer``
        changes behind loses the newest ones (counted as dropped frames ``watch_overflow``):
        writes never wait on a slow reader.
        """
        async with self._subs.watch(prefix, max_buffer) as receive:
            yield receive

    # --- the operator's calls (issue 16) -----------------------------------------------------

    def effective_config(self) -> dict[str, object]:
        """The configuration this node runs with, as a plain map (``gossipkv config show``):
        ``node`` (name, addresses, seeds, data dir, fsync, TLS, log level), ``gossip``,
        ``kv``, ``limits`` and ``storage_limits``."""
        return effective_config(
            self.settings,
            name=self.name if self._rt is not None else self.settings.name,
            address=self._rt.address if self._rt is not None else None,
            tls=self._tls,
        )

    async def remove(self, name: str) -> dict[str, object]:
        """Remove member ``name``, which the operator declares dead (``gossipkv remove``).

        The leader (this node, or the one it forwards to) removes the member's incarnation and
        publishes a partition table without it at once; its partitions go to the remaining
        members. This works even when the survivors are a minority: the operator's word stands
        in for the majority. Refused while the leader can reach the member.

        Args:
          name: the member to remove.

        Returns:
          ``{"removed", "generation", "leader", "minority"}``: what was removed, by which
          leader, and whether the survivors were short of a majority.

        Raises:
          RemoteError: refused (``bad_request``: unknown member, or it is reachable and up;
            ``unavailable``: no leader in reach).
          NodeClosedError: the node is not running.
        """
        return await self._operator.remove(name)

    async def snapshot(self, tag: str = "") -> dict[str, object]:
        """Hard-link a consistent copy of this node's log engine into
        ``<data dir>/snapshots/<tag>/`` (``gossipkv snapshot``, like ``nodetool snapshot``).

        The copy holds every write this replica acknowledged before the call (the active
        segment is sealed first) and opens as a data dir of its own: to restore it, stop the
        node and put its ``data`` and ``hints`` folders in place of the node's (see the README).
        It costs no disk space until compaction deletes the originals. Hints are copied just
        after the data, so a write between the two may be in one copy only.

        Args:
          tag: the snapshot's name (letters, digits, ``.``, ``_``, ``-``; at most 64); the
            current UTC time (``20261129-001500``) when empty.

        Returns:
          ``{"tag", "path", "files", "bytes", "keys"}``.

        Raises:
          InvalidArgument: a bad or taken tag, or a node with no data dir (use ``gossipkv
            backup`` for a dump of the cluster's keys instead).
          StorageError: the copy failed (it leaves nothing behind).
          NodeClosedError: the node is not running.
        """
        return await self._operator.snapshot(tag)

    async def leave(self, *, handoff_seconds: float | None = None, force: bool = False) -> None:
        """Decommission this node: hand off its data, leave the cluster gracefully, and stop.

        Announces ``leaving``; the leader publishes a partition table without this node; every
        current owner of each partition this node held pulls it from this node (a transfer) and
        confirms, and this node's hinted writes go to their keys' current owners. Only then does
        it announce ``left``, gossip it for two more rounds, tell the live peers and end
        :meth:`run`: when it returns, no key this node held has fewer than N copies (unless a
        receiving owner is down). Other members show it ``left``; the leader removes it after
        ``remove_after``. A call while a leave is under way waits for it.

        Args:
          handoff_seconds: how long the hand-off may take (default:
            ``GossipConfig.handoff_timeout``): a protocol deadline, not a cancellation: when it
            passes the node stays up (or, with ``force``, leaves).
          force: leave when the time is up even if the hand-off is incomplete (what only this
            node held may be lost).

        Raises:
          Unavailable: the hand-off did not finish in time (and ``force`` was not given): the
            node stays up, ``leaving`` and still serving as a source; calling ``leave`` again
            waits again.
          NodeClosedError: the node is not running.
        """
        await self._decommission.leave(handoff_seconds, force)

    # --- running -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until it leaves or is cancelled; ``task_status.started(node)`` once serving.

        ``node = await nursery.start(Node(...).run)``. The node opens its data dir, binds
        ``listen``, persists its new generation before the first gossip, then serves until
        :meth:`leave` completes or the surrounding scope is cancelled (which stops it at once,
        without a graceful leave). Storage engines opened here are closed on the way out.

        Raises:
          DataDirError: the data dir is unusable or locked by another process.
          TransportError: the listen address cannot be bound.
          RuntimeError: the node already ran once (create a new :class:`Node` to restart).
        """
        if self._rt is not None:
            raise RuntimeError("a Node can only run once; create a new one to restart")
        record = await self._store.open()
        try:
            async with contextlib.AsyncExitStack() as stack:
                storage = self.settings.storage
                if storage is None:
                    storage = await stack.enter_async_context(
                        open_storage(
                            self._sub_dir("data"), fsync=self.settings.fsync, limits=self._limits
                        )
                    )
                hints = self.settings.hints
                if hints is None:
                    hints = await stack.enter_async_context(
                        open_storage(
                            self._sub_dir("hints"), fsync=self.settings.fsync, limits=self._limits
                        )
                    )
                await self._run(record, storage, hints, task_status)
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group
        finally:
            self._stopped = True
            self._decommission.stopped()
            self._subs.close()
            with trio.move_on_after(2.0, shield=True):
                await self._store.close()

    def _sub_dir(self, name: str) -> Path | None:
        return None if self.settings.data_dir is None else Path(self.settings.data_dir) / name

    async def _run(
        self,
        record: PeerRecord | None,
        storage: StorageEngine,
        hints: StorageEngine,
        task_status: trio.TaskStatus[Node],
    ) -> None:
        # Inline, not in a thread: listing /proc/self/fd touches no disk, and waiting for a
        # thread would let a simulation's MockClock jump while this node starts.
        self._conns.fit_descriptor_limit(*_descriptor_use())
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                self._transport.serve, self.settings.listen, self._pool.handle_connection
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
            self._rt = _Runtime(gossiper, nursery, address)
            self._kv = KeyValueService(
                node_id=name,
                storage=storage,
                hints=hints,
                table=gossiper.table,
                reachable=gossiper.reachable_members,
                send=self._pool.send_to_member,
                start=self._pool.start_to_member,
                rng=self._rng,
                config=self.kv_config,
                limits=self._limits,
                stamp=self._hlc.now,
                refusals=self._refusals,
                queued_bytes=lambda: self._counters.queued_bytes,
                known_table=decisions.table if decisions is not None else None,
                gone=gossiper.is_gone,
                wall_ms=self._wall,
            )
            self._kv.reaper.pulling = gossiper.pulling
            self._kv.reaper.gone = gossiper.is_gone
            self._kv.on_change = self._subs.on_change
            self._counters.on_drain = self._kv.admission.wake
            if self._incarnation.begin(self._kv, record, rejoins=bool(seeds)):
                await nursery.start(self._kv.run)
            self._ready.set()
            if gossiper.decisions_dirty:
                await self._incarnation.save()
            if gossiper.replaces is not None:
                await self._operator.claim_replacement(gossiper.replaces, seeds)
            nursery.start_soon(self._membership.gossip_loop)
            nursery.start_soon(self._membership.evaluate_loop)
            log.info(
                "%s listening on %s (generation %d, %s)",
                name,
                address,
                start.generation,
                "new cluster" if start.bootstrap else f"joining via {', '.join(seeds) or 'nobody'}",
            )
            task_status.started(self)

    def reload_tls(self) -> None:
        """Read the TLS certificate, key and CA bundle again (SIGHUP, ``gossipkv certs reload``).

        Connections opened from now on use them; open ones keep the ones they started with, so
        rotating a CA (a bundle of old and new in ``ca.pem``, then new certificates, then the new
        CA alone) drops no request.

        Raises:
          ConfigError: this node runs without TLS, or the files do not load (the ones in use
            stay in force).
        """
        reload = getattr(self._transport, "reload_tls", None)
        if not self._tls or reload is None:
            raise ConfigError("TLS is not enabled on this peer")
        reload()
        log.info("reloaded the TLS certificate and CA bundle")

    def _runtime(self) -> _Runtime:
        if self._rt is None:
            raise NodeClosedError("node is not running (use open_node or nursery.start(node.run))")
        return self._rt

    def _evaluated(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _next_evaluation(self) -> None:
        await self._changed.wait()

    def _hello(self) -> Hello:
        g = self._runtime().gossiper
        return Hello(
            PROTOCOL_VERSION,
            self.config.cluster,
            g.node_id,
            g.generation,
            self.address,
            hlc=self._hlc.now(),
        )


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


@asynccontextmanager
async def open_node(
    settings: NodeConfig | None = None, /, **overrides: Unpack[NodeOptions]
) -> AsyncIterator[Node]:
    """Start a :class:`Node` (same arguments) and leave the cluster gracefully on exit.

    ``async with open_node(name="a", listen="127.0.0.1:7400", seeds=[...]) as node: ...``, or
    ``async with open_node(NodeConfig(...)) as node: ...``.

    Args:
      settings: the node's configuration (:class:`NodeConfig`; default: ``NodeConfig()``).
      **overrides: fields of :class:`NodeConfig` that replace those of ``settings``.

    Yields:
      The running :class:`Node`, once it serves.

    Raises:
      ConfigError: a bad address, seed list or setting (before anything starts).
      DataDirError: the data dir is unusable or locked by another process.
      TransportError: the listen address cannot be bound.

    On exit the node leaves gracefully (bounded by ``leave_timeout`` plus propagation); if the
    body raised or was cancelled it simply stops. A single gossipkv error from inside is raised
    as itself (``from`` the exception group the node's nursery made).
    """
    node = Node(settings, **overrides)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                yield node
            except BaseException:
                nursery.cancel_scope.cancel()
                raise
            bound = node.config.handoff_timeout + node.config.leave_timeout + 3.0
            with trio.move_on_after(bound):
                await node.leave(force=True)
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
        raise error from group
