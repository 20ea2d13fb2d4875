"""The node runtime: owns the nursery, the connections and the loops around the sans-IO core.

A :class:`Node` binds its listen address, derives its generation (Generation Clock) from the data
dir and the wall clock, then runs: the gossip loop (one scuttlebutt round every
``gossip_interval``), the evaluation loop (failure detection, leader duties, persistence; the lag
of its own wake-ups is the event-loop lag the local-pause guard reads), and one task per
connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import inspect
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec

import trio

from . import _admin, _wallclock
from ._connections import ConnectionTable
from ._dvv import partition_of
from ._dvv import values as dvv_values
from ._errors import (
    ConfigError,
    ConnectionClosed,
    DataDirError,
    DecodeError,
    GossipKVError,
    HandshakeError,
    InvalidArgument,
    NodeClosedError,
    RemoteError,
    TransportError,
    Unavailable,
    error_code,
    single_error,
)
from ._hlc import HybridClock
from ._kv import Change, GetResult, KeyValueService, PutResult
from ._limits import NetworkLimits
from ._membership_runtime import MembershipRuntime
from ._messages import (
    PROTOCOL_VERSION,
    Ack,
    ConfigRequest,
    Hello,
    KeysRequest,
    KvGet,
    KvPut,
    KvResult,
    LeaveRequest,
    LogLevelRequest,
    MembersRequest,
    Message,
    MonitorRequest,
    OwnersRequest,
    PartitionFetch,
    PingRequest,
    ProbeRequest,
    ReloadTlsRequest,
    RemoveRequest,
    RepairRequest,
    ReplaceRequest,
    ReplicaGet,
    ReplicaPut,
    Reply,
    RestoreRequest,
    RingRequest,
    SetMetadataRequest,
    Shutdown,
    SnapshotRequest,
    StatsRequest,
    Syn,
    TombstoneCheck,
    TreeBranches,
    TreeKeys,
    TreeRoot,
    TreeSegments,
    WatchRequest,
)
from ._partitions import PartitionTable
from ._peer import DEFERRED, Channel, Deferred, TransportCounters
from ._persist import FileNodeStore, NodeStore, PeerRecord
from ._pool import ConnectionPool
from ._replica_store import KVConfig
from ._router import Audience, Respond, Route, Router, route
from ._statistics import NodeStatistics as NodeStatistics
from ._statistics import statistics_body as statistics_body
from ._subscriptions import Subscriptions
from ._types import Address
from .membership._gossiper import GossipConfig, Gossiper, MembershipEvent, MemberView
from .membership._leader import Decisions
from .storage import DEFAULT_LIMITS, FsyncPolicy, StorageEngine, StorageLimits, open_storage
from .storage._base import encode_key
from .transport._base import ReceiveBudget, Transport
from .transport._tls import TLSConfig

log = logging.getLogger("gossipkv.node")

WallClock = Callable[[], int]


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
      name: stable node id, 1..128 characters. Defaults to the name persisted in ``data_dir``,
        else the advertised ``host:port``.
      listen: ``host:port`` to bind (port 0 picks a free port).
      seeds: addresses to join through. With none, the node starts a new cluster; with some, it
        keeps trying them until it joins (it never forms a second cluster by itself).
      data_dir: where the identity, generation, accepted decisions (``membership.cbor``), the data
        (``data/``) and the hints (``hints/``) are kept. ``None``: everything in memory.
      cluster: cluster name; peers and clients of another cluster are refused.
      config: membership tuning (:class:`GossipConfig`); its ``cluster`` is overridden by ``cluster``.
      transport: defaults to TCP; tests pass a ``gossipkv.testing.SimNetwork`` transport.
      advertise: the address others should use, when it differs from ``listen``.
      rng: randomness for target choice (seeded in simulation).
      wall_clock: milliseconds since the epoch (faked in simulation).
      store: where to persist the peer record (overrides ``data_dir``).
      bootstrap: start a new cluster even with seeds (default: only when there are none).
      request_timeout: seconds a gossip exchange or a handshake may take.
      connect_timeout: seconds a connection attempt to another member may take.
      kv: data-path defaults (:class:`KVConfig`); ``r`` and ``w`` may not exceed
        ``config.replicas``.
      fsync: the data dir's fsync policy: ``"batch"`` (default: concurrent writes share one fsync
        and are acknowledged after it), ``"always"`` (one fsync per write) or ``"none"``
        (acknowledged once the OS has the bytes: survives ``kill -9``, not a power cut).
      storage: the replica's storage engine, instead of one opened in ``data_dir``.
      hints: the hinted-handoff storage engine, instead of one opened in ``data_dir``.
      limits: connection, frame and subscription limits (:class:`NetworkLimits`); the frame
        deadline and receive budget are applied to ``transport``.
      storage_limits: what one write may store and one read returns (key and value size,
        value nesting, siblings, bytes per key; :class:`StorageLimits`). Every peer of a
        cluster should use the same limits.
      tls: mutual TLS on every connection (:class:`TLSConfig`, e.g.
        ``TLSConfig.from_dir(d, name)``); ``None``: plaintext. With TLS a member's certificate
        must name it and carry the ``peer`` role, clients may not send member messages, and
        operator calls (leave, remove, repair, set_metadata, certificate reload) need the
        ``operator`` or ``peer`` role.
      replace: the name of a dead member this new one takes over (``gossipkv peer
        --replace``): the leader hands it exactly that member's partitions (no other partition
        moves) and removes the dead one; it fills them from the other owners and serves once
        they are full. Refused (:exc:`ConfigError` from :meth:`run`) when that member is
        unknown or alive. Ignored by a member restarted with its data dir.

    Attributes:
      config: the membership settings in force.
      kv_config: the data-path settings in force.
      limits: the network limits in force.

    Raises:
      ConfigError: at construction, for a bad address, seed list or setting.

    Until the node serves, its properties, :meth:`members`, :meth:`leader`, :meth:`statistics`,
    :meth:`set_metadata` and the data path raise :exc:`NodeClosedError`.
    """

    def __init__(
        self,
        *,
        name: str | None = None,
        listen: str = "127.0.0.1:7400",
        seeds: list[str] | tuple[str, ...] = (),
        data_dir: str | os.PathLike[str] | None = None,
        cluster: str = "gossipkv",
        config: GossipConfig | None = None,
        transport: Transport | None = None,
        advertise: str | None = None,
        rng: random.Random | None = None,
        wall_clock: WallClock | None = None,
        store: NodeStore | None = None,
        bootstrap: bool | None = None,
        request_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        kv: KVConfig | None = None,
        fsync: str = "batch",
        storage: StorageEngine | None = None,
        hints: StorageEngine | None = None,
        limits: NetworkLimits | None = None,
        storage_limits: StorageLimits | None = None,
        replace: str | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        if isinstance(seeds, str):
            raise ConfigError("seeds must be a list of 'host:port' strings, not one string")
        try:
            Address.parse(listen)
            for seed in seeds:
                Address.parse(seed)
            if advertise is not None:
                Address.parse(advertise)
            cfg = GossipConfig(cluster=cluster) if config is None else config
            if config is not None and cluster != cfg.cluster:
                cfg = dataclasses.replace(cfg, cluster=cluster)
            cfg.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if name is not None:
            check_member_name(name)
        if listen in seeds and not listen.endswith(":0"):
            raise ConfigError(f"seed {listen} is this peer's own listen address")
        if replace is not None:
            check_member_name(replace)
            if replace == name:
                raise ConfigError("a member cannot replace itself")
            if not seeds:
                raise ConfigError("--replace needs --seed: the cluster to join")
        self._replace = replace
        if not (request_timeout > 0 and connect_timeout > 0):
            raise ConfigError("timeouts must be > 0")
        self.limits = NetworkLimits() if limits is None else limits
        try:
            self.limits.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        self.kv_config = kv if kv is not None else KVConfig()
        self._limits = storage_limits if storage_limits is not None else DEFAULT_LIMITS
        try:
            self.kv_config.validate()
            self._limits.validate()
            FsyncPolicy(fsync)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.kv_config.r > cfg.replicas or self.kv_config.w > cfg.replicas:
            raise ConfigError(
                f"r={self.kv_config.r} and w={self.kv_config.w} must not exceed N={cfg.replicas}"
            )
        self._fsync = fsync
        self._data_dir = data_dir
        self._storage_given = storage
        self._hints_given = hints
        self._kv: KeyValueService | None = None
        self.config = cfg
        self._name = name
        self._listen = listen
        self._advertise = advertise
        self._seeds = list(seeds)
        self._bootstrap = bootstrap
        if transport is None:
            from .transport._tcp import TcpTransport

            transport = TcpTransport(max_frame=self.limits.max_frame, tls=tls)
        elif tls is not None:
            raise ConfigError("pass tls to the transport you give, not to the node")
        # Identities come from certificates when the transport speaks TLS (issue 13).
        self._tls = getattr(transport, "tls", None) is not None
        # The frame deadline and the receive budget are enforced where frames are read.
        transport.frame_timeout = self.limits.frame_timeout
        transport.receive_budget = ReceiveBudget(self.limits.max_receive_buffer)
        self._transport = transport
        self._rng = rng if rng is not None else random.Random()
        self._wall = wall_clock if wall_clock is not None else _wallclock.wall_ms
        self._hlc = HybridClock(self._wall)
        self._store: NodeStore = (
            store if store is not None else FileNodeStore(data_dir) if data_dir else NodeStore()
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
        self._done = trio.Event()
        self._stopped = False
        self._closing = False
        self._record: PeerRecord | None = None
        self._leave_table: PartitionTable | None = None
        self._leave_began = math.inf
        self._leave_state: dict[str, object] = {}
        self._leave_task = False
        self._log_limit = LogLimiter(60.0)
        self._wiped = 0
        self._log_fanout = _admin.LogFanout()
        #: Membership events, key watches and log monitors, local and remote.
        self._subs = Subscriptions(
            limits=self._limits,
            conns=self._conns,
            dropped=self._counters.dropped,
            log_fanout=self._log_fanout,
        )
        self._ping_lock = trio.Lock()
        self._key_snapshot = _admin.KeySnapshot()
        # Back after more than tombstone_grace away: the data path stays closed until the
        # cluster's reaped_upto says whether the replica must be wiped (see gossipkv._reaper).
        self._checking_data = False
        self._rejoins = False
        self._alive_before = 0
        self._alive_saved_at = -math.inf
        self._reaped_saved = 0
        #: Every message this peer accepts, who may send it and what answers it.
        self._router = Router(
            self._routes(), gate=transport.wait_runnable, dropped=self._counters.dropped
        )
        #: One channel per peer address, dialled on demand, and every inbound connection.
        self._pool = ConnectionPool(
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
            gossiper=lambda: self._runtime().gossiper,
            nursery=lambda: self._runtime().nursery,
            ready=self._ready,
            log_limit=self._log_limit,
            request_timeout=request_timeout,
            connect_timeout=connect_timeout,
        )
        #: The gossip and evaluation loops around the membership core.
        self._membership = MembershipRuntime(
            gossiper=lambda: self._runtime().gossiper,
            nursery=lambda: self._runtime().nursery,
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
            persist=self._persist,
            wipe=self._wipe,
            tend_data=self._tend_data,
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
        if self._checking_data:
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
        g = self._runtime().gossiper
        rows = g.members(trio.current_time())
        c = g.counters
        table = g.table()
        kv = self._service()
        kvc = kv.counters
        store = kv.storage.statistics()
        return NodeStatistics(
            name=g.node_id,
            address=self.address,
            cluster=self.config.cluster,
            generation=g.generation,
            status=g.status,
            leader=g.leader(),
            converged=g.converged(),
            members_by_status=dict(Counter(r.status for r in rows)),
            gossip_rounds=c.rounds,
            syns_received=c.syns_received,
            deltas_applied=c.deltas_applied,
            budget_truncations=c.budget_truncations,
            pause_guards=c.pause_guards,
            frames_in=self._counters.frames_in,
            frames_out=self._counters.frames_out,
            bytes_in=self._counters.bytes_in,
            bytes_out=self._counters.bytes_out,
            dropped_frames=dict(self._counters.dropped),
            refused_handshakes=dict(self._counters.refused),
            connections=self._conns.peer_channels + self._conns.client_channels,
            peer_connections=self._conns.peer_channels,
            client_connections=self._conns.client_channels,
            refusals={
                **self._refusals,
                **{f"gossip_{k}": v for k, v in g.counters.refused.items()},
            },
            max_loop_lag=self._membership.lag.max,
            last_loop_lag=self._membership.lag.last,
            table_epoch=None if table is None else list(table.epoch),
            partitions=0 if table is None else table.q,
            replicas=self.config.replicas if table is None else table.n,
            partitions_owned={} if table is None else dict(sorted(table.replica_counts().items())),
            kv_gets=kvc.gets,
            kv_puts=kvc.puts,
            kv_deletes=kvc.deletes,
            kv_forwarded=kvc.forwarded,
            read_repairs=kvc.read_repairs,
            hints_pending=kv.hints_pending,
            hints_stored=kvc.hints_stored,
            hints_delivered=kvc.hints_delivered,
            siblings_seen=kvc.siblings_seen,
            kv_errors=dict(kvc.errors),
            storage_keys=store.keys,
            anti_entropy_rounds=kv.anti_entropy.counters.rounds,
            anti_entropy_partitions_compared=kv.anti_entropy.counters.partitions_compared,
            anti_entropy_partitions_differing=kv.anti_entropy.counters.partitions_differing,
            anti_entropy_keys_repaired=kv.anti_entropy.counters.keys_repaired,
            anti_entropy_errors=kv.anti_entropy.counters.errors,
            anti_entropy_tree_roots_compared=kv.anti_entropy.counters.tree_roots_compared,
            anti_entropy_branches_exchanged=kv.anti_entropy.counters.branches_exchanged,
            anti_entropy_segments_exchanged=kv.anti_entropy.counters.segments_exchanged,
            anti_entropy_trees_checked=kv.anti_entropy.counters.trees_checked,
            anti_entropy_tree_mismatches=kv.anti_entropy.counters.tree_mismatches,
            ownership_handoff_rounds=kv.ownership_handoff.counters.rounds,
            ownership_handoff_partitions=kv.ownership_handoff.counters.partitions_handed_off,
            ownership_handoff_keys=kv.ownership_handoff.counters.keys_sent,
            ownership_handoff_errors=kv.ownership_handoff.counters.errors,
            leave=dict(self._leave_state),
            contexts_clamped=kvc.contexts_clamped,
            context_catch_ups=kvc.context_catch_ups,
            quarantined_records=store.quarantined_records
            + kv.hints.statistics().quarantined_records,
            quarantine_repairs=kv.repair.counters.keys_repaired
            + kv.repair.counters.hints_rewritten,
            quarantine_pending=kv.repair.pending,
            inflight_bytes=kv.admission.used,
            admission_waits=kv.admission.waits,
            partitions_filling=kv.transfers.pending,
            partitions_filled=kv.transfers.counters.partitions_filled,
            keys_filled=kv.transfers.counters.keys_filled,
            transfer_errors=kv.transfers.counters.errors,
            transfer_bad_pages=kv.transfers.counters.bad_pages,
            transfers=[
                {
                    "partition": t.partition,
                    "from": t.source,
                    "to": g.node_id,
                    "keys_done": t.keys_done,
                    "keys_total": t.keys_total,
                    "rate": round(t.rate(trio.current_time()), 1),
                    "error": t.error,
                }
                for t in kv.transfers.in_flight()
            ],
            under_replicated=g.under_replicated(),
            tombstone_grace=kv.reaper.grace if kv.reaper.enabled else None,
            tombstones_pending=kv.reaper.pending,
            tombstones_reaped=kv.reaper.counters.reaped,
            hints_expired=kvc.hints_expired,
            replica_wiped=self._wiped,
            replicas_effective=0 if table is None else min(len(o) for o in table.owners),
            read_quorum=kv.config.r,
            write_quorum=kv.config.w,
            latency={
                "get": kvc.get_latency.snapshot(),
                "put": kvc.put_latency.snapshot(),
                "replica": kvc.replica_latency.snapshot(),
                "gossip_round": self._membership.gossip_latency.snapshot(),
            },
            accepted_connections=self._conns.accepted,
            watches=self._conns.watches,
            outbound_queued_bytes=self._counters.queued_bytes,
            gossip_stale_ignored=c.stale_ignored,
            gossip_from_removed=c.quarantined,
            gossip_bad_values=c.bad_values,
            identity_conflicts=c.identity_conflicts,
            kv_put_requests=kvc.put_plans,
            idempotent_hits=kvc.idempotent_hits,
            read_repairs_skipped=kvc.read_repairs_skipped,
            storage_engine=store.engine,
            storage_disk_bytes=store.disk_bytes,
            storage_live_bytes=store.live_bytes,
            storage_segments=store.segments,
            storage_pending_writes=store.pending_writes,
            storage_delete_markers=store.delete_markers,
            storage_fsyncs=store.fsyncs,
            storage_compactions=store.compactions,
            storage_compaction_errors=store.compaction_errors,
            storage_bytes_reclaimed=store.bytes_reclaimed,
            storage_corrupt_records_skipped=store.corrupt_records_skipped,
            storage_torn_tail_truncations=store.torn_tail_truncations,
            storage_recovery_seconds=store.recovery_seconds,
            quarantine_dropped=kv.repair.counters.dropped,
            quarantine_repair_errors=kv.repair.counters.errors,
            tombstone_reaper_rounds=kv.reaper.counters.rounds,
            tombstones_checked=kv.reaper.counters.checked,
            tombstones_blocked=kv.reaper.counters.blocked,
            tombstone_reaper_errors=kv.reaper.counters.errors,
            transfer_pages=kv.transfers.counters.pages,
            transfer_pages_sent=kv.transfer_source.pages_sent,
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
            await self._changed.wait()

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

    # --- the operator's toolbox (issue 16; the pieces live in _admin) --------------------------

    async def _toolbox_request(self, message: Message) -> dict[str, object]:
        if isinstance(message, ConfigRequest):
            return self.effective_config()
        if isinstance(message, LogLevelRequest):
            return _admin.set_log_level(message.level)
        if isinstance(message, PingRequest):
            async with self._ping_lock:  # one sweep at a time, however many clients ask
                return await self._ping_members()
        assert isinstance(message, KeysRequest)
        table = self._runtime().gossiper.table()
        if table is None:
            raise RemoteError("not_ready", "no partition table yet (the cluster has not formed)")
        return await _admin.keys_page(
            self._service().storage,
            self._limits,
            snapshot=self._key_snapshot,
            partition=message.partition,
            partitions=table.q,
            after=message.after,
            limit=message.limit,
            prefix=message.prefix,
            clocks=message.clocks,
        )

    def effective_config(self) -> dict[str, object]:
        """The configuration this node runs with, as a plain map (``gossipkv config show``):
        ``node`` (name, addresses, seeds, data dir, fsync, TLS, log level), ``gossip``,
        ``kv``, ``limits`` and ``storage_limits``."""
        return {
            "node": {
                "name": self.name if self._rt is not None else self._name,
                "listen": self._listen,
                "address": self._rt.address if self._rt is not None else None,
                "advertise": self._advertise,
                "seeds": list(self._seeds),
                "data_dir": None if self._data_dir is None else str(self._data_dir),
                "cluster": self.config.cluster,
                "fsync": self._fsync,
                "tls": self._tls,
                "log_level": _admin.current_log_level(),
            },
            "gossip": _admin.plain_config(self.config),
            "kv": _admin.plain_config(self.kv_config),
            "limits": _admin.plain_config(self.limits),
            "storage_limits": _admin.plain_config(self._limits),
        }

    async def _ping_members(self) -> dict[str, object]:
        """Ask every member this node knows (but itself, and members gone for good) for its
        member list, all at once, and time each answer."""
        g = self._runtime().gossiper
        rows = [
            m
            for m in g.members(trio.current_time())
            if m.name != g.node_id and m.address and m.status not in ("left", "removed")
        ]
        results: dict[str, dict[str, object]] = {}

        async def ping(name: str, address: str) -> None:
            started = trio.current_time()
            error: str | None = None
            try:
                with trio.fail_after(self._request_timeout + self._connect_timeout):
                    channel = await self._pool.channel_to(address)
                    await channel.request(MembersRequest())
            except trio.TooSlowError:
                error = "no answer in time"
            except (ConnectionClosed, TransportError, RemoteError, DecodeError) as exc:
                error = str(exc) or type(exc).__name__
            rtt = trio.current_time() - started
            results[name] = {"rtt_ms": None if error else round(rtt * 1000, 3), "error": error}

        async with trio.open_nursery() as nursery:
            for m in rows:
                nursery.start_soon(ping, m.name, str(m.address))
        return {
            "self": g.node_id,
            "members": [
                {
                    "name": m.name,
                    "address": m.address,
                    "status": m.status,
                    "reachable": m.reachable,
                    "phi": m.phi,
                    **results[m.name],
                }
                for m in rows
            ],
        }

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
        return await self._operator_remove(name)

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
        kv = self._data_service()
        if self._data_dir is None:
            raise InvalidArgument(
                f"{self.name} keeps its data in memory (no --data-dir): nothing to snapshot; "
                "use `gossipkv backup` for a dump of the cluster's keys"
            )
        if not tag:
            stamp = datetime.datetime.fromtimestamp(self._wall() / 1000, tz=datetime.UTC)
            tag = stamp.strftime("%Y%m%d-%H%M%S")
        if not _SNAPSHOT_TAG.fullmatch(tag):
            raise InvalidArgument(
                f"snapshot tag {tag[:80]!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        root = Path(self._data_dir) / "snapshots" / tag
        if await trio.to_thread.run_sync(root.exists):
            raise InvalidArgument(f"snapshot {tag!r} exists already ({root})")
        files, size = await kv.storage.snapshot(root / "data")
        hint_files, hint_size = await kv.hints.snapshot(root / "hints")
        log.info("%s: snapshot %s: %d files, %d bytes", self.name, root, files, size)
        return {
            "tag": tag,
            "path": str(root),
            "files": files + hint_files,
            "bytes": size + hint_size,
            "keys": kv.storage.statistics().keys,
        }

    def _ring_body(self) -> dict[str, object]:
        """The ``ring --json`` shape: the table, and the partitions members are still pulling."""
        g = self._runtime().gossiper
        table = g.table()
        if table is None:
            return {"epoch": None, "partitions": 0, "replicas": self.config.replicas, "owners": []}
        pulling = {p: sorted(g.pulling(p)) for p in range(table.q)}
        return {
            "epoch": list(table.epoch),
            "partitions": table.q,
            "replicas": table.n,
            "owners": [list(row) for row in table.owners],
            "pulling": {str(p): who for p, who in pulling.items() if who},
            "under_replicated": g.under_replicated(),
        }

    async def _owners_body(self, key: str) -> dict[str, object]:
        """The ``owners --json`` shape: where ``key`` lives and who holds it now."""
        kv = self._service()
        g = self._runtime().gossiper
        try:
            encode_key(key, self._limits)
        except GossipKVError as exc:
            raise RemoteError(error_code(exc), str(exc)) from exc
        table = g.table()
        if table is None:
            raise RemoteError("not_ready", "the cluster has no partition table yet")
        partition = partition_of(key, table.q)
        reachable = g.reachable_members()
        rows: list[dict[str, object]] = []

        async def ask(owner: str, out: dict[str, object]) -> None:
            try:
                with trio.fail_after(kv.config.replica_timeout):
                    clock = await kv.read_replica(owner, key)
            except (GossipKVError, trio.TooSlowError) as exc:
                out["error"] = str(exc) or "no answer"
                return
            values = [] if clock is None else [s for s in dvv_values(clock) if not s.tombstone]
            out["holds"] = bool(values)
            out["siblings"] = len(values)

        async with trio.open_nursery() as nursery:
            for owner in table.owners[partition]:
                row: dict[str, object] = {
                    "name": owner,
                    "reachable": owner in reachable,
                    "pulling": owner in g.pulling(partition),
                    "holds": False,
                    "siblings": 0,
                }
                rows.append(row)
                if owner in reachable:
                    nursery.start_soon(ask, owner, row)
        return {"key": key, "partition": partition, "epoch": list(table.epoch), "owners": rows}

    async def _operator_remove(self, name: str) -> dict[str, object]:
        g = self._runtime().gossiper
        leader = g.leader()
        if leader is None:
            raise RemoteError("unavailable", "no leader in reach to remove the member")
        if leader != g.node_id:
            reply = await self._pool.send_to_member(leader, RemoveRequest(name))
            if not isinstance(reply, Reply):
                raise RemoteError("internal", f"unexpected reply {reply.TAG} from {leader}")
            return reply.body
        try:
            generation, minority = g.operator_remove(name, trio.current_time(), self._wall())
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        log.warning(
            "%s removed %s (generation %d) on the operator's word%s",
            g.node_id,
            name,
            generation,
            "; the survivors are a minority" if minority else "",
        )
        self._membership.publish_events()
        await self._persist()
        return {
            "removed": name,
            "generation": generation,
            "leader": g.node_id,
            "minority": minority,
        }

    async def _hand_off(self, handoff_seconds: float | None, force: bool) -> None:
        """Announce ``leaving`` and wait until this node's partitions and hints are handed off
        (the gossiper holds the ``left`` status until then)."""
        g = self._runtime().gossiper
        kv = self._service()
        if g.status not in ("leaving", "left"):
            self._leave_table = g.table()
            self._leave_began = trio.current_time()
        g.hold_leave = True
        g.start_leave(trio.current_time())
        limit = self.config.handoff_timeout if handoff_seconds is None else handoff_seconds
        deadline = trio.current_time() + limit
        self._leave_state = {"state": "handing_off"}
        while True:
            await kv.flush_hints()
            done, state = self._hand_off_state()
            self._leave_state = state
            if done:
                break
            if trio.current_time() >= deadline:
                if force:
                    log.warning("%s leaves before its hand-off finished: %s", g.node_id, state)
                    break
                self._leave_state = {**state, "state": "failed"}
                raise Unavailable(f"hand-off incomplete after {limit:g} s: {state['reason']}")
            with trio.move_on_after(1.0):
                await self._changed.wait()
        self._leave_state = {**self._leave_state, "state": "leaving"}
        g.hold_leave = False

    def _hand_off_state(self) -> tuple[bool, dict[str, object]]:
        """Whether this leaving node has handed off everything, and the progress."""
        g = self._runtime().gossiper
        kv = self._service()
        table, before = g.table(), self._leave_table
        hints = kv.hints_pending
        if g.reachable_members() <= {g.node_id} or g.removed:
            # The last member in reach has nowhere to hand anything to; a removed one's
            # partitions were re-replicated without it already.
            return True, {"partitions_left": 0, "hints_left": hints, "reason": ""}
        if table is None or before is None:
            return hints == 0, {"partitions_left": 0, "hints_left": hints, "reason": "hints"}
        if table.owned_by(g.node_id):
            return False, {
                "partitions_left": len(table.owned_by(g.node_id)),
                "hints_left": hints,
                "reason": "the leader has not moved this node's partitions yet",
            }
        waiting: dict[int, set[str]] = {}
        # Owners that are down cannot pull now: anti-entropy and read repair fill them from the
        # others when they return (the leave says so); waiting for them would never end.
        reachable = g.reachable_members()
        handed = kv.transfer_source.handed
        for p in before.owned_by(g.node_id):
            receivers = (set(table.owners[p]) - {g.node_id}) & reachable
            # Only pulls confirmed since the leave began count (one from an earlier change of
            # ownership says nothing of what this node holds now).
            missing = {r for r in receivers if handed.get((p, r), -math.inf) < self._leave_began}
            if missing:
                waiting[p] = missing
        slow = sorted({r for rs in waiting.values() for r in rs})
        reason = (
            f"{len(waiting)} partitions not yet pulled by {', '.join(slow)}"
            if waiting
            else f"{hints} hints not delivered (no owner of their keys reachable)"
            if hints
            else ""
        )
        return not waiting and hints == 0, {
            "partitions_left": len(waiting),
            "partitions_total": len(before.owned_by(g.node_id)),
            "hints_left": hints,
            "reason": reason,
        }

    async def _claim_replacement(self, replaced: str, seeds: list[str]) -> None:
        """Ask the cluster (through a seed, forwarded to its leader) to hand this new member the
        partitions of ``replaced``; a refusal ends the node with :exc:`ConfigError`."""
        g = self._runtime().gossiper
        request = ReplaceRequest(replaced, g.node_id, g.generation)
        last_log = -math.inf
        while True:
            for addr in seeds:
                try:
                    with trio.fail_after(self._request_timeout * 3):
                        channel = await self._pool.channel_to(addr)
                        reply = await channel.request(request)
                except RemoteError as exc:
                    if exc.code == "bad_request":
                        raise ConfigError(f"cannot replace {replaced}: {exc}") from None
                    continue  # no leader in reach there yet: try another seed, then again
                except (TransportError, HandshakeError, DecodeError, trio.TooSlowError):
                    continue
                if isinstance(reply, Reply):
                    log.info("%s takes over the partitions of %s", g.node_id, replaced)
                    return
            now = trio.current_time()
            if now - last_log >= 5.0:
                last_log = now
                log.warning(
                    "%s: still trying to reach the cluster to replace %s", g.node_id, replaced
                )
            await trio.sleep(1.0)

    async def _operator_replace(self, request: ReplaceRequest) -> dict[str, object]:
        g = self._runtime().gossiper
        leader = g.leader()
        if leader is None:
            raise RemoteError("unavailable", "no leader in reach to hand over the partitions")
        if leader != g.node_id:
            reply = await self._pool.send_to_member(leader, request)
            if not isinstance(reply, Reply):
                raise RemoteError("internal", f"unexpected reply {reply.TAG} from {leader}")
            return reply.body
        try:
            done = g.operator_replace(
                request.replaced,
                request.replacement,
                request.generation,
                trio.current_time(),
                self._wall(),
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if done:
            log.warning(
                "%s: %s replaces %s (its partitions, no others)",
                g.node_id,
                request.replacement,
                request.replaced,
            )
            self._membership.publish_events()
            await self._persist()
        return {"replaced": request.replaced, "by": request.replacement, "leader": g.node_id}

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
        rt = self._runtime()
        g = rt.gossiper
        if self._closing:
            await self._done.wait()
            return
        if self._leave_task:
            raise Unavailable("a leave is already under way")
        self._leave_task = True
        try:
            await self._hand_off(handoff_seconds, force)
        finally:
            self._leave_task = False
        self._closing = True
        with trio.move_on_after(self.config.leave_timeout + 2.0):
            await self.wait_until(lambda n: g.has_left)
        # Let the 'left' status spread before going silent (Serf LeavePropagateDelay).
        await trio.sleep(2 * self.config.gossip_interval + 0.3)
        notice = Shutdown(rt.gossiper.node_id, rt.gossiper.generation)
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                for addr in rt.gossiper.live_addresses():
                    nursery.start_soon(self._notify_quietly, addr, notice)
        self._done.set()
        rt.nursery.cancel_scope.cancel()

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
                storage = self._storage_given
                if storage is None:
                    storage = await stack.enter_async_context(
                        open_storage(self._sub_dir("data"), fsync=self._fsync, limits=self._limits)
                    )
                hints = self._hints_given
                if hints is None:
                    hints = await stack.enter_async_context(
                        open_storage(self._sub_dir("hints"), fsync=self._fsync, limits=self._limits)
                    )
                await self._run(record, storage, hints, task_status)
        except BaseExceptionGroup as group:
            error = single_error(group)
            if error is None:
                raise
            raise error from group
        finally:
            self._closing = True
            self._stopped = True
            self._done.set()
            self._subs.close()
            with trio.move_on_after(2.0, shield=True):
                await self._store.close()

    def _sub_dir(self, name: str) -> Path | None:
        return None if self._data_dir is None else Path(self._data_dir) / name

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
                self._transport.serve, self._listen, self._pool.handle_connection
            )
            address = self._advertise or _advertised(bound)
            name = self._name or (record.node_id if record else None) or address
            if record is not None and record.node_id != name:
                raise DataDirError(
                    f"data dir {self._data_dir} belongs to member {record.node_id!r}, not "
                    f"{name!r}: start it as --name {record.node_id} or use another data dir"
                )
            if self._seeds and set(self._seeds) <= {address, self._listen}:
                raise ConfigError(f"--seed {self._seeds[0]} is this peer's own address")
            stored_gen = record.generation if record else 0
            generation = max(stored_gen + 1, self._wall())
            decisions = Decisions.from_plain(record.decisions) if record else None
            if record is not None and record.decisions is not None and decisions is None:
                log.error(
                    "%s: the persisted membership decisions are malformed and were ignored; "
                    "the peer rejoins through its seeds",
                    name,
                )
            if decisions is not None:
                # What a forged record may have left on disk before this version vetted gossip.
                ahead = int(self.config.max_generation_ahead * 1000)
                problems = Decisions().vet(decisions, max_generation=generation + ahead, seen=None)
                if problems:
                    log.error(
                        "%s: the persisted membership decisions hold what no leader could have "
                        "decided (%s); that part was dropped%s",
                        name,
                        ", ".join(sorted(set(problems))),
                        "" if decisions.term else " and the peer rejoins through its seeds",
                    )
                    if not decisions.term:
                        decisions = None
            known = record.known_peers if record else []
            seeds = [s for s in dict.fromkeys([*self._seeds, *known]) if s != address]
            # A peer with nothing to join through starts a new cluster: one that never belonged
            # to a cluster (no record), or one that left its cluster (or was removed) knowing no
            # other member, as the only member of a cluster does. A restarted member resumes its
            # admission (that wins over bootstrapping), or rejoins through the members it
            # remembers, even without --seed.
            bootstrap = self._bootstrap if self._bootstrap is not None else not seeds
            if bootstrap and self._bootstrap is None and record is not None:
                if decisions is None or decisions.admission(name) is None:
                    log.warning(
                        "%s holds no admission (it left, was removed, or was never admitted) "
                        "and knows no member to rejoin through: it starts a new cluster (give "
                        "--seed to join one instead)",
                        name,
                    )
            self._record = PeerRecord(
                name,
                generation,
                decisions.to_plain() if decisions else None,
                known,
                # Kept as they were until this incarnation has checked its data (a crash
                # meanwhile must not make a long absence look short).
                record.alive_ms if record else 0,
                record.reaped_upto_ms if record else 0,
            )
            # Generation Clock: the new generation is durable before the first gossip.
            await self._store.save(self._record)
            gossiper = Gossiper(
                self.config,
                node_id=name,
                address=address,
                generation=generation,
                seeds=seeds,
                now=trio.current_time(),
                decisions=decisions,
                bootstrap=bootstrap,
                replaces=self._replace,
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
            self._kv.reaper.on_reaped_upto = self._publish_reaped_upto
            if record is not None:
                self._kv.reaper.reaped_upto = self._reaped_saved = record.reaped_upto_ms
                gossiper.set_reaped_upto(record.reaped_upto_ms)
                self._alive_before = record.alive_ms
            grace_ms = self.kv_config.tombstone_grace * 1000
            away_ms = self._wall() - self._alive_before
            self._checking_data = self._alive_before > 0 and away_ms > grace_ms
            self._rejoins = bool(seeds)
            self._kv.on_change = self._subs.on_change
            self._counters.on_drain = self._kv.admission.wake
            if self._checking_data:
                log.warning(
                    "%s was last alive %.0fs ago, longer than tombstone_grace (%.0fs): its data "
                    "path stays closed until the cluster says whether tombstones were reaped "
                    "meanwhile",
                    name,
                    away_ms / 1000,
                    self.kv_config.tombstone_grace,
                )
            else:
                await nursery.start(self._kv.run)
            self._ready.set()
            if gossiper.decisions_dirty:
                await self._persist()
            if gossiper.replaces is not None:
                await self._claim_replacement(gossiper.replaces, seeds)
            nursery.start_soon(self._membership.gossip_loop)
            nursery.start_soon(self._membership.evaluate_loop)
            log.info(
                "%s listening on %s (generation %d, %s)",
                name,
                address,
                generation,
                "new cluster" if bootstrap else f"joining via {', '.join(seeds) or 'nobody'}",
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

    async def _notify_quietly(self, addr: str, message: Message) -> None:
        try:
            channel = await self._pool.channel_to(addr)
            await channel.notify(message)
            await channel.flush()
        except Exception as exc:  # best effort by design
            log.debug("notice to %s failed: %r", addr, exc)

    def _evaluated(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def _publish_reaped_upto(self, wall_ms: int) -> None:
        """The reaper is about to delete tombstones written up to ``wall_ms``: gossip it and
        persist it first (see :mod:`gossipkv._reaper`, case b)."""
        self._runtime().gossiper.set_reaped_upto(wall_ms)
        await self._persist()

    async def _tend_data(self, g: Gossiper) -> None:
        """Record that this member is alive (every little while), and finish the check of a
        member back from a long absence once gossip told it the cluster's ``reaped_upto``."""
        kv = self._kv
        if kv is None:
            return
        now = trio.current_time()
        every = min(60.0, self.kv_config.tombstone_grace / 10)
        if not self._checking_data:
            # Every member carries the cluster's reaped_upto on (and persists it), so it
            # outlives the member that reaped.
            upto = g.reaped_upto()
            if upto > self._reaped_saved:
                self._reaped_saved = upto
                g.set_reaped_upto(upto)
                await self._persist()
            if now - self._alive_saved_at >= every:
                self._alive_saved_at = now
                await self._persist()
            return
        knows_others = self._rejoins or any(not m.is_self for m in g.members(now))
        if knows_others and g.counters.deltas_applied == 0:
            return  # no gossip heard yet: the cluster's reaped_upto is unknown
        upto = g.reaped_upto()
        if upto > self._alive_before:
            await self._wipe(
                f"{g.node_id} was away longer than tombstone_grace and tombstones written "
                "meanwhile were reaped"
            )
        self._checking_data = False
        await self._runtime().nursery.start(kv.run)

    async def _wipe(self, why: str) -> None:
        """Drop every key and hint this member holds (it could bring back deleted values) and
        pull its partitions again from the other owners."""
        kv = self._service()
        keys = await _delete_all(kv.storage)
        for key in keys:
            kv.reaper.forget(key)
        hints = await _delete_all(kv.hints)
        kv.drop_pending_hints()
        self._wiped += len(keys)
        kv.transfers.refill()
        log.warning(
            "%s: dropped its %d stored keys and %d hints; it refills from the other owners "
            "(a member away longer than tombstone_grace is rebuilt, as Cassandra does after "
            "gc_grace)",
            why,
            len(keys),
            len(hints),
        )

    async def _persist(self) -> None:
        g = self._runtime().gossiper
        g.decisions_dirty = False
        peers = sorted(
            {m.address for m in g.members(trio.current_time()) if m.address and not m.is_self}
        )
        alive = self._alive_before if self._checking_data else self._wall()
        reaped = max(self._reaped_saved, self._kv.reaper.reaped_upto if self._kv else 0)
        record = PeerRecord(
            g.node_id, g.generation, g.decisions.to_plain(), peers[:64], alive, reaped
        )
        try:
            await self._store.save(record)
        except Exception as exc:
            g.decisions_dirty = True
            log.error("cannot persist membership state: %s", exc)

    # --- connections ---------------------------------------------------------------------------

    async def _leave_quietly(self, handoff_seconds: float | None, force: bool) -> None:
        """A leave an operator asked for over the wire: its failure is logged and shown in the
        statistics (the operator's ``gossipkv leave`` watches them), never raised."""
        try:
            await self.leave(handoff_seconds=handoff_seconds, force=force)
        except Unavailable as exc:
            log.error("%s stays up: %s", self.name, exc)

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

    # --- the request router: one table -----------------------------------------------------------

    def _routes(self) -> dict[type[Message], Route]:
        """Every message this peer accepts: who may send it and what answers it."""
        anyone, operator, member = Audience.ANYONE, Audience.OPERATOR, Audience.MEMBER
        data = self._serve_data
        data_nowait = self._serve_data_nowait
        toolbox = self._serve_toolbox
        return dict(
            [
                # Gossip: SYNs are answered in the reader (pure computation).
                route(Syn, member, request=self._serve_syn, nowait=self._serve_syn_nowait),
                route(Ack, member, oneway=self._serve_ack),
                route(Shutdown, member, oneway=self._serve_shutdown),
                route(ProbeRequest, member, request=self._serve_probe),
                # The data path: replica calls and client reads and writes, in the reader
                # when nothing needs to wait.
                route(KvGet, anyone, request=data, nowait=data_nowait),
                route(KvPut, anyone, request=data, nowait=data_nowait),
                route(ReplicaGet, member, request=data, nowait=data_nowait),
                route(ReplicaPut, member, request=data, nowait=data_nowait),
                route(PartitionFetch, member, request=self._serve_partition_fetch),
                route(TombstoneCheck, member, request=self._serve_tombstone_check),
                route(TreeRoot, member, request=self._serve_tree),
                route(TreeBranches, member, request=self._serve_tree),
                route(TreeSegments, member, request=self._serve_tree),
                route(TreeKeys, member, request=self._serve_tree),
                route(ReplaceRequest, member, request=self._serve_replace),
                # What anyone may ask.
                route(MembersRequest, anyone, request=self._serve_members),
                route(StatsRequest, anyone, request=self._serve_stats),
                route(WatchRequest, anyone, request=self._serve_watch_request),
                route(RingRequest, anyone, request=self._serve_ring),
                route(OwnersRequest, anyone, request=self._serve_owners),
                route(PingRequest, anyone, request=toolbox),
                route(KeysRequest, anyone, request=toolbox),
                # Operator calls.
                route(ConfigRequest, operator, request=toolbox),
                route(LogLevelRequest, operator, request=toolbox),
                route(MonitorRequest, operator, request=self._serve_monitor_request),
                route(SetMetadataRequest, operator, request=self._serve_set_metadata),
                route(RemoveRequest, operator, request=self._serve_remove),
                route(ReloadTlsRequest, operator, request=self._serve_reload_tls),
                route(RestoreRequest, operator, request=self._serve_restore),
                route(RepairRequest, operator, request=self._serve_repair),
                route(SnapshotRequest, operator, request=self._serve_snapshot),
                route(LeaveRequest, operator, request=self._serve_leave),
            ]
        )

    async def _serve_syn(self, channel: Channel, message: Syn) -> Message:
        if channel.remote.node_id == "client":
            raise InvalidArgument("clients do not gossip")
        return self._answer_syn(message)

    def _serve_syn_nowait(self, channel: Channel, message: Syn, respond: Respond) -> Message | None:
        if channel.remote.node_id == "client" or not self._transport.runnable():
            return None  # refused (or held while paused) on the task path
        return self._answer_syn(message)

    def _answer_syn(self, message: Syn) -> Message:
        if message.hlc:
            self._hlc.update(message.hlc)
        return self._runtime().gossiper.on_syn(message, trio.current_time())

    async def _serve_ack(self, channel: Channel, message: Ack) -> None:
        answer = self._runtime().gossiper.on_ack(message, trio.current_time())
        if answer is not None:
            # What the round's initiator asked for: the last leg of its exchange.
            with trio.move_on_after(self._request_timeout):
                await channel.notify(answer)

    async def _serve_probe(self, channel: Channel, message: ProbeRequest) -> Message:
        return await self._membership.serve_probe(message)

    async def _serve_shutdown(self, channel: Channel, message: Shutdown) -> None:
        g = self._runtime().gossiper
        g.on_shutdown(message, trio.current_time(), sender=channel.remote.node_id)

    async def _serve_data(
        self, channel: Channel, message: KvGet | KvPut | ReplicaGet | ReplicaPut
    ) -> Message:
        return await self._data_service().handle(message)

    def _serve_data_nowait(
        self,
        channel: Channel,
        message: KvGet | KvPut | ReplicaGet | ReplicaPut,
        respond: Respond,
    ) -> Message | Deferred | None:
        """The data path without a task per request: replica requests an in-memory replica
        answers at once, and client reads and writes whose replies are gathered by callbacks."""
        if not self._transport.runnable() or self._checking_data:
            return None
        kv = self._service()
        if isinstance(message, KvGet):
            if message.local:
                return None
            fan = kv.start_get(message.key, r=message.r, on_result=partial(_answer_get, respond))
            return DEFERRED if fan is not None else None
        if isinstance(message, KvPut):
            kv.start_put(message, partial(_answer_put, respond))
            return DEFERRED
        return kv.handle_nowait(message)

    async def _serve_partition_fetch(self, channel: Channel, message: PartitionFetch) -> Message:
        return await self._data_service().transfer_source.handle(channel.remote.node_id, message)

    async def _serve_tombstone_check(self, channel: Channel, message: TombstoneCheck) -> Message:
        return await self._data_service().reaper.handle(message)

    async def _serve_tree(
        self, channel: Channel, message: TreeRoot | TreeBranches | TreeSegments | TreeKeys
    ) -> Message:
        return await self._data_service().anti_entropy.handle(message)

    async def _serve_replace(self, channel: Channel, message: ReplaceRequest) -> Message:
        return Reply(await self._operator_replace(message))

    async def _serve_members(self, channel: Channel, message: MembersRequest) -> Message:
        g = self._runtime().gossiper
        return Reply(members_body(g.node_id, g.leader(), g.members(trio.current_time())))

    async def _serve_stats(self, channel: Channel, message: StatsRequest) -> Message:
        return Reply(statistics_body(self.statistics()))

    async def _serve_watch_request(self, channel: Channel, message: WatchRequest) -> Message:
        # RemoteError("too_many_watches") when over a watch cap.
        await self._runtime().nursery.start(self._subs.serve_watch, channel, message.prefix)
        return Reply({"ok": True})

    async def _serve_ring(self, channel: Channel, message: RingRequest) -> Message:
        return Reply(self._ring_body())

    async def _serve_owners(self, channel: Channel, message: OwnersRequest) -> Message:
        return Reply(await self._owners_body(message.key))

    async def _serve_toolbox(
        self,
        channel: Channel,
        message: ConfigRequest | LogLevelRequest | PingRequest | KeysRequest,
    ) -> Message:
        return Reply(await self._toolbox_request(message))

    async def _serve_monitor_request(self, channel: Channel, message: MonitorRequest) -> Message:
        level = _admin.level_of(message.level)
        await self._runtime().nursery.start(self._subs.serve_monitor, channel, level)
        return Reply({"ok": True})

    async def _serve_set_metadata(self, channel: Channel, message: SetMetadataRequest) -> Message:
        self._runtime().gossiper.set_metadata(message.key, message.value)
        return Reply({"ok": True})

    async def _serve_remove(self, channel: Channel, message: RemoveRequest) -> Message:
        return Reply(await self._operator_remove(message.name))

    async def _serve_reload_tls(self, channel: Channel, message: ReloadTlsRequest) -> Message:
        try:
            # Reading the files is disk I/O: off the event loop.
            await trio.to_thread.run_sync(self.reload_tls)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        return Reply({"ok": True})

    async def _serve_restore(self, channel: Channel, message: RestoreRequest) -> Message:
        return Reply(await self._data_service().restore(message.key, message.clock))

    async def _serve_repair(self, channel: Channel, message: RepairRequest) -> Message:
        return Reply(await self._data_service().repair_partition(message.partition))

    async def _serve_snapshot(self, channel: Channel, message: SnapshotRequest) -> Message:
        return Reply(await self.snapshot(message.tag))

    async def _serve_leave(self, channel: Channel, message: LeaveRequest) -> Message:
        g = self._runtime().gossiper
        if self._closing or self._leave_task:
            return Reply({"ok": True, "status": g.status})
        if not message.force and g.reachable_members() <= {g.node_id}:
            raise InvalidArgument(
                "no other member is in reach to hand this node's data to; leaving would "
                "lose it (use --force to leave anyway)",
            )
        within = message.timeout if message.timeout > 0 else None
        self._runtime().nursery.start_soon(self._leave_quietly, within, message.force)
        return Reply({"ok": True, "status": "leaving"})


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


#: What ``gossipkv snapshot`` accepts as a tag (it names a folder under the data dir).
_SNAPSHOT_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

#: Names a member may not take: ``client`` is what every client says in its hello.
RESERVED_NAMES = frozenset({"client"})


def check_member_name(name: str) -> None:
    """Refuse a member name that could not work: empty or over 128 characters, reserved, or
    holding a character that separates fields in actor ids (``/``) or hint keys, or a control
    character.

    Raises:
      ConfigError: naming the problem.
    """
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise ConfigError("a member name must be 1..128 characters")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is a reserved name (clients use it); choose another --name")
    if "/" in name or not name.isprintable() or name != name.strip():
        raise ConfigError(
            f"member name {name!r} must be printable, without '/' or surrounding spaces"
        )


def members_body(self_name: str, leader: str | None, rows: list[MemberView]) -> dict[str, object]:
    """The ``members --json`` shape (stable; documented in the README).

    Args:
      self_name: the name of the member whose view this is.
      leader: the leader it sees, or ``None``.
      rows: its membership table (:meth:`Node.members`).

    Returns:
      ``{"self", "leader", "members": [{"name", "address", "status", "reachable", "up_number",
      "age_rank", "generation", "heartbeat", "phi", "metadata"}, ...]}``, JSON-serializable.
    """
    return {
        "self": self_name,
        "leader": leader,
        "members": [
            {
                "name": r.name,
                "address": r.address,
                "status": r.status,
                "reachable": r.reachable,
                "up_number": r.up_number,
                "age_rank": r.age_rank,
                "generation": r.generation,
                "heartbeat": r.heartbeat,
                "phi": r.phi,
                "metadata": r.metadata,
            }
            for r in rows
        ],
    }


async def _delete_all(engine: StorageEngine) -> list[str]:
    """Delete every key of ``engine`` (a few hundred at a time, so a log engine commits them
    together), then compact it; returns the keys."""
    keys = await engine.keys(0, 1)
    for i in range(0, len(keys), 512):
        async with trio.open_nursery() as nursery:
            for key in keys[i : i + 512]:
                nursery.start_soon(engine.delete, key)
    await engine.compact()
    return keys


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


def _as_remote(exc: GossipKVError) -> RemoteError:
    return exc if isinstance(exc, RemoteError) else RemoteError(error_code(exc), str(exc))


def _answer_get(
    respond: Callable[[Message | BaseException], None], outcome: GetResult | GossipKVError
) -> None:
    if isinstance(outcome, GossipKVError):
        respond(_as_remote(outcome))
    else:
        respond(
            KvResult(
                outcome.key, outcome.found, tuple(outcome.values), outcome.context, outcome.more
            )
        )


def _answer_put(
    respond: Callable[[Message | BaseException], None], outcome: PutResult | GossipKVError
) -> None:
    if isinstance(outcome, GossipKVError):
        respond(_as_remote(outcome))
    else:
        respond(
            KvResult(
                outcome.key,
                bool(outcome.values),
                tuple(outcome.values),
                outcome.context,
                outcome.more,
            )
        )


P = ParamSpec("P")


def _typed_like(
    cls: Callable[P, Node],
) -> Callable[
    [Callable[..., AbstractAsyncContextManager[Node]]],
    Callable[P, AbstractAsyncContextManager[Node]],
]:
    """Give ``open_node`` the parameters of ``Node`` for type checkers and ``help()``, without
    writing them twice."""

    def wrap(
        fn: Callable[..., AbstractAsyncContextManager[Node]],
    ) -> Callable[P, AbstractAsyncContextManager[Node]]:
        fn.__signature__ = inspect.signature(cls).replace(  # type: ignore[attr-defined]
            return_annotation="AbstractAsyncContextManager[Node]"
        )
        # The Args of the class, in place of the one line that points to them.
        args = (cls.__doc__ or "").split("    Args:\n", 1)[1].split("\n\n", 1)[0]
        fn.__doc__ = (fn.__doc__ or "").replace(
            "      **kwargs: the keyword arguments of :class:`Node`.\n", args + "\n"
        )
        return fn

    return wrap


@_typed_like(Node)
@asynccontextmanager
async def open_node(**kwargs: Any) -> AsyncIterator[Node]:
    """Start a :class:`Node` (same arguments) and leave the cluster gracefully on exit.

    ``async with open_node(name="a", listen="127.0.0.1:7400", seeds=[...]) as node: ...``

    Args:
      **kwargs: the keyword arguments of :class:`Node`.

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
    node = Node(**kwargs)
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
