"""The public face of a gossipkv peer: :class:`Node` and :func:`open_node`.

A :class:`Node` is a facade: every call is documented here and carried out by the part that
owns it, which :class:`~gossipkv._node_runtime.NodeRuntime` builds and runs (the membership
core and loops, the data path, subscriptions, the operator's calls, the decommission).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Unpack

import trio

from ._errors import InvalidArgument, single_error
from ._kv import Change, GetResult, KeyValueService, PutResult
from ._node_config import NodeConfig, NodeOptions, node_config
from ._node_operator import OperatorCalls
from ._node_runtime import NodeRuntime, Running
from ._statistics import NodeStatistics as NodeStatistics
from .membership._gossiper import MembershipEvent, MemberView


class Node(OperatorCalls):
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
        #: The parts this node is made of, and its life (the facade delegates to them).
        self._rt = NodeRuntime(settings)

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

    def _runtime(self) -> Running:
        return self._rt.running()

    def _service(self) -> KeyValueService:
        return self._rt.service()

    def _data_service(self) -> KeyValueService:
        return self._rt.data_service()

    def hlc(self) -> int:
        """A fresh hybrid logical clock timestamp (``ms << 16 | counter``), merged from peers."""
        return self._rt.hlc.now()

    @property
    def outbound_queued_bytes(self) -> int:
        """Bytes queued for sending on all of this node's connections together (replies and
        requests not yet written): what admission control can weigh new work against."""
        return self._rt.counters.queued_bytes

    def statistics(self) -> NodeStatistics:
        """A frozen snapshot of this node's state and counters (what ``gossipkv stats`` shows).

        Returns:
          A new :class:`NodeStatistics`; it does not change as the node goes on.
        """
        return self._rt.statistics()

    async def wait_until(self, predicate: Callable[[Node], bool]) -> None:
        """Wait until ``predicate(node)`` holds; it is re-checked after every evaluation tick.

        Args:
          predicate: called with this node, often with :meth:`members` or :meth:`leader`; it must
            not block.

        There is no timeout: bound the wait with ``trio.fail_after``. An exception raised by
        ``predicate`` propagates.
        """
        while not predicate(self):
            await self._rt.next_evaluation()

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
        async with self._rt.subs.events(max_buffer) as receive:
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
        if not isinstance(prefix, str):
            raise InvalidArgument(f"a watch prefix must be a string, got {type(prefix).__name__}")
        async with self._rt.subs.watch(prefix, max_buffer) as receive:
            yield receive

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
        await self._rt.run(lambda: task_status.started(self))


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
