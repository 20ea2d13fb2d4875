"""A coordinator's calls to the replicas of a key: this peer's own through its
:class:`~gossipkv._replica.Replica`, every other one by request.

A replica request goes out on an already open connection from the reader's callback when it can
(the fast path: no task per request), and in a task of its own otherwise; either way its answer
lands in the request's :class:`~gossipkv._fanout.Fanout`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

from . import _dvv
from ._admission import ByteBudget
from ._errors import ClusterNotReady, GossipKVError, TransportError, Unavailable
from ._fanout import Fanout, FanoutExpiry
from ._kv_model import Clock, KVCounters
from ._messages import Message, PartitionFetch, PartitionItems, ReplicaGet, ReplicaPut, ReplicaState
from ._partitions import PartitionTable
from ._replica import Replica
from ._replica_store import KVConfig
from ._replication import Target, preference_list

SendRequest = Callable[[str, Message], Awaitable[Message]]
ReplyCallback = Callable[[Message | BaseException], None]
#: Starts a request to a member over an already open connection without waiting: returns a
#: function that forgets it, or ``None`` when there is no open connection (the caller then
#: falls back to ``SendRequest`` in a task). The callback gets the reply or the exception.
StartRequest = Callable[[str, Message, ReplyCallback], Callable[[], None] | None]
OnReply = Callable[[Fanout, str, Message | BaseException], None]


class ReplicaCalls:
    """Where a key's copies are, and the requests that reach them.

    Args:
      replica: this peer's replica.
      table: returns the newest partition table (``None`` before the cluster formed).
      reachable: returns the members this peer can currently send to (itself included).
      send: sends a request to a member by name, bounded by the caller.
      start: starts a request over an open connection without waiting (see
        :data:`StartRequest`).
      pulling: the members still pulling a partition.
      admission: the memory budget of the reads and writes this peer coordinates.
      config: tuning (``replica_timeout``, ``sloppy_quorum``).
      counters: where replica latencies are observed.
    """

    def __init__(
        self,
        *,
        replica: Replica,
        table: Callable[[], PartitionTable | None],
        reachable: Callable[[], set[str]],
        send: SendRequest,
        start: StartRequest,
        pulling: Callable[[int], set[str]],
        admission: ByteBudget,
        config: KVConfig,
        counters: KVCounters,
    ) -> None:
        self.replica = replica
        self.node_id = replica.node_id
        self.table = table
        self.reachable = reachable
        self.send = send
        self._start = start
        self._pulling = pulling
        self.admission = admission
        self.config = config
        self.counters = counters
        self.expiry = FanoutExpiry(config.replica_timeout)
        #: Where background work (read repairs, puts that must wait) runs; set while running.
        self.nursery: trio.Nursery | None = None

    def targets(self, key: str) -> tuple[list[Target], int]:
        """The sloppy preference list of ``key`` as this peer sees it now (see
        :func:`~gossipkv._replication.preference_list`).

        Raises:
          ClusterNotReady: no partition table yet.
        """
        return preference_list(
            self.table(), key, self.reachable(), sloppy=self.config.sloppy_quorum
        )

    def filling(self, key: str) -> set[str]:
        """The members still pulling the partition of ``key`` (their answers may be partial)."""
        table = self.table()
        return self._pulling(_dvv.partition_of(key, table.q)) if table else set()

    def estimate(self, key: str, written: int) -> int:
        """The bytes a coordinated read or write of ``key`` holds until its replicas answered:
        a copy of the key per replica and one for the reply (what this replica stores tells
        its size), plus the value written; twice that, because each copy that arrives exists
        as received bytes and as a decoded clock for a while."""
        table = self.table()
        copies = (table.n if table is not None else 3) + 1
        stored = self.replica.storage.stored_bytes(key) or 0
        return 2 * copies * (max(stored, 1024) + written)

    def nursery_or_fail(self) -> trio.Nursery:
        if self.nursery is None:
            raise ClusterNotReady("the data path is not running yet")
        return self.nursery

    def fanout(
        self,
        members: list[str],
        need: int,
        *,
        counted: set[str] | None = None,
        on_enough: Callable[[Fanout], None] | None = None,
        on_done: Callable[[Fanout], None] | None = None,
        release: Callable[[], None] | None = None,
    ) -> Fanout:
        """A fan-out to ``members`` with the replica timeout, observed and due to expire."""
        fan = Fanout(
            members,
            need,
            self.config.replica_timeout,
            counted=counted,
            on_enough=on_enough,
            on_done=on_done,
            release=release,
        )
        fan.on_reply = self._answered
        return fan

    def _answered(self, fan: Fanout, member: str) -> None:
        if member != self.node_id:
            self.counters.replica_latency.observe(trio.current_time() - fan.started)

    # --- the fast path: a request started from a callback --------------------------------------

    def start(self, fan: Fanout, member: str, message: Message, on_reply: OnReply) -> bool:
        """Send ``message`` to ``member`` over an open connection, its answer to ``on_reply``;
        False (nothing sent) when there is no open connection."""
        cancel = self._start(member, message, partial(on_reply, fan, member))
        if cancel is None:
            return False
        fan.cancels[member] = cancel
        return True

    def on_get_reply(self, fan: Fanout, member: str, reply: Message | BaseException) -> None:
        try:
            fan.answered(member, self._clock_of_reply(member, reply))
        except GossipKVError as exc:
            self.replica.count_error(exc)
            fan.failed(member)

    def on_put_reply(self, fan: Fanout, member: str, reply: Message | BaseException) -> None:
        try:
            self._clock_of_reply(member, reply)
        except GossipKVError as exc:
            self.replica.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, None)

    def _clock_of_reply(self, member: str, reply: Message | BaseException) -> Clock | None:
        if isinstance(reply, BaseException):
            raise reply
        if not isinstance(reply, ReplicaState):
            raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
        return None if reply.clock is None else self.replica.clock_from_wire(reply.clock)

    # --- the task path -------------------------------------------------------------------------

    async def ask(self, fan: Fanout, member: str, key: str) -> None:
        """Read ``member``'s clock of ``key`` into ``fan``."""
        try:
            clock = await self.read(member, key)
        except GossipKVError as exc:
            self.replica.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, clock)

    async def put_to(self, fan: Fanout, member: str, key: str, clock: Clock, hint_for: str) -> None:
        """Write ``clock`` to ``member`` and count its acknowledgement in ``fan``."""
        try:
            await self.write(member, key, clock, hint_for)
        except GossipKVError as exc:
            self.replica.count_error(exc)
            fan.failed(member)
        else:
            fan.answered(member, None)

    async def read(self, member: str, key: str) -> Clock | None:
        """``member``'s own clock of ``key`` (this peer's when it is ``member``).

        Raises:
          TransportError, Unavailable: it could not be reached or did not answer in time.
        """
        if member == self.node_id:
            return await self.replica.storage.get(key)
        with trio.move_on_after(self.config.replica_timeout):
            reply = await self.send(member, ReplicaGet(key))
            if not isinstance(reply, ReplicaState):
                raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
            return None if reply.clock is None else self.replica.clock_from_wire(reply.clock)
        raise TransportError(f"{member} did not answer in time")

    async def write(self, member: str, key: str, clock: Clock, hint_for: str) -> None:
        """Merge ``clock`` into ``member``'s copy of ``key`` (keeping a hint for ``hint_for``).

        Raises:
          TransportError, Unavailable: it could not be reached or did not answer in time.
        """
        if member == self.node_id:
            await self.replica.apply(key, clock, hint_for=hint_for)
            return
        with trio.move_on_after(self.config.replica_timeout):
            await self.send(member, ReplicaPut(key, self.replica.encoded(key, clock), hint_for))
            return
        raise TransportError(f"{member} did not acknowledge in time")

    async def gather(self, key: str, members: list[str]) -> dict[str, Clock | None]:
        """Every listed member's clock of ``key`` (those that fail or time out are left out)."""
        replies: dict[str, Clock | None] = {}

        async def ask(member: str) -> None:
            try:
                replies[member] = await self.read(member, key)
            except GossipKVError as exc:
                self.replica.count_error(exc)

        async with trio.open_nursery() as nursery:
            for member in members:
                nursery.start_soon(ask, member)
        return replies

    async def fetch_partition(self, member: str, message: PartitionFetch) -> PartitionItems:
        """One page of a partition ``member`` holds (a transfer's pull).

        Raises:
          TransportError: no page in time. Unavailable: an unexpected reply.
        """
        # A page may need a few hundred disk reads at the source: allow several replica timeouts.
        with trio.move_on_after(self.config.replica_timeout * 5):
            reply = await self.send(member, message)
            if not isinstance(reply, PartitionItems):
                raise Unavailable(f"unexpected reply {reply.TAG} from {member}")
            return reply
        raise TransportError(f"{member} did not send a page of partition {message.partition}")
