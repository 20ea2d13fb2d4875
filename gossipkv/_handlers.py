"""What answers each message a peer accepts: the request handlers and the table that routes them.

:meth:`RequestHandlers.table` is the one dispatch table the :class:`~gossipkv._router.Router`
reads: for every message type, who may send it (anyone, an operator, members only) and the
handler that answers it. The handlers only translate between the wire and the part that owns
the answer (the membership core, the data path and its background work, the subscriptions, the
operator's calls and toolbox, the decommission); a :class:`~gossipkv.GossipKVError` they raise
leaves as a typed :class:`~gossipkv.RemoteError` in the router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import trio

from . import _admin
from ._decommission import Decommission
from ._errors import ConfigError, GossipKVError, InvalidArgument, RemoteError, error_code
from ._hlc import HybridClock
from ._kv import GetResult, KeyValueService, PutResult
from ._messages import (
    Ack,
    BatchError,
    ConfigRequest,
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
    ProbeResult,
    ReloadTlsRequest,
    RemoveRequest,
    RepairRequest,
    ReplaceRequest,
    ReplicaBatch,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
    ReplicaState,
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
from ._operator import Operator
from ._peer import DEFERRED, Channel, Deferred, reply_for_exception
from ._router import Audience, Respond, Route, route
from ._statistics import NodeStatistics, statistics_body
from ._subscriptions import Subscriptions
from ._toolbox import Toolbox
from .membership._gossiper import Gossiper, MemberView
from .transport._base import Transport

#: The clocks one ``ReplicaBatchReply`` carries at most (bytes; the first always fits): an op
#: past it is answered ``batch_full``, and its coordinator asks again with that op alone.
BATCH_REPLY_BYTES = 1024 * 1024


class RequestHandlers:
    """One peer's handlers (see the module docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      nursery: where watches, monitors and a requested leave run.
      hlc: the node's hybrid clock (a SYN's stamp is merged).
      transport: its pause gate (a paused peer answers nothing in the reader).
      service: the data path.
      data_service: the data path, refused while this member checks its data.
      checking: whether this member checks its data (the reader leaves those requests to a task,
        which refuses them).
      subscriptions: watches and log monitors asked for over the wire.
      statistics: the node's statistics snapshot.
      effective_config: the node's configuration as a plain map.
      reload_tls: reads the TLS files again (blocking: called in a thread).
      toolbox: the operator's read-only views.
      operator: the operator's calls.
      decommission: the leave an operator asks for.
      probe: probes a member for another one whose own probe went unanswered (SWIM's
        indirect probe).
      request_timeout: seconds the last leg of a gossip exchange may take to send.
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        nursery: Callable[[], trio.Nursery],
        hlc: HybridClock,
        transport: Transport,
        service: Callable[[], KeyValueService],
        data_service: Callable[[], KeyValueService],
        checking: Callable[[], bool],
        subscriptions: Subscriptions,
        statistics: Callable[[], NodeStatistics],
        effective_config: Callable[[], dict[str, object]],
        reload_tls: Callable[[], None],
        toolbox: Toolbox,
        operator: Operator,
        decommission: Decommission,
        probe: Callable[[ProbeRequest], Awaitable[ProbeResult]],
        request_timeout: float,
    ) -> None:
        self._gossiper = gossiper
        self._nursery = nursery
        self._hlc = hlc
        self._transport = transport
        self._service = service
        self._data_service = data_service
        self._checking = checking
        self._subs = subscriptions
        self._statistics = statistics
        self._effective_config = effective_config
        self._reload_tls = reload_tls
        self._toolbox = toolbox
        self._operator = operator
        self._decommission = decommission
        self._probe = probe
        self._request_timeout = request_timeout

    def table(self) -> dict[type[Message], Route]:
        """Every message this peer accepts: who may send it and what answers it."""
        anyone, operator, member = Audience.ANYONE, Audience.OPERATOR, Audience.MEMBER
        data = self._serve_data
        data_nowait = self._serve_data_nowait
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
                route(
                    ReplicaBatch,
                    member,
                    request=self._serve_batch,
                    nowait=self._serve_batch_nowait,
                ),
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
                route(PingRequest, anyone, request=self._serve_ping),
                route(KeysRequest, anyone, request=self._serve_keys),
                # Operator calls.
                route(ConfigRequest, operator, request=self._serve_config),
                route(LogLevelRequest, operator, request=self._serve_log_level),
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
        return self._gossiper().on_syn(message, trio.current_time())

    async def _serve_ack(self, channel: Channel, message: Ack) -> None:
        answer = self._gossiper().on_ack(message, trio.current_time())
        if answer is not None:
            # What the round's initiator asked for: the last leg of its exchange.
            with trio.move_on_after(self._request_timeout):
                await channel.notify(answer)

    async def _serve_probe(self, channel: Channel, message: ProbeRequest) -> Message:
        return await self._probe(message)

    async def _serve_shutdown(self, channel: Channel, message: Shutdown) -> None:
        g = self._gossiper()
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
        if not self._transport.runnable() or self._checking():
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

    def _serve_batch_nowait(
        self, channel: Channel, message: ReplicaBatch, respond: Respond
    ) -> Message | Deferred | None:
        """A replica batch in the reader: every op an in-memory replica answers at once is
        answered now; when some must wait (a key being written, a hint to keep, a disk engine),
        those finish in a task and the whole batch is answered then."""
        if not self._transport.runnable() or self._checking():
            return None
        kv = self._service()
        results: list[Message | Exception | None] = []
        waiting = False
        for op in message.ops:
            answer: Message | Exception | None
            try:
                answer = kv.handle_nowait(op)
            except Exception as exc:
                answer = exc
            waiting = waiting or answer is None
            results.append(answer)
        if not waiting:
            return batch_reply(message, results, channel.remote.node_id)
        self._nursery().start_soon(self._finish_batch, kv, channel, message, results, respond)
        return DEFERRED

    async def _finish_batch(
        self,
        kv: KeyValueService,
        channel: Channel,
        message: ReplicaBatch,
        results: list[Message | Exception | None],
        respond: Respond,
    ) -> None:
        try:
            await _complete_batch(kv, message, results)
        except BaseException as exc:
            respond(exc)
            raise
        respond(batch_reply(message, results, channel.remote.node_id))

    async def _serve_batch(self, channel: Channel, message: ReplicaBatch) -> Message:
        results: list[Message | Exception | None] = [None] * len(message.ops)
        await _complete_batch(self._data_service(), message, results)
        return batch_reply(message, results, channel.remote.node_id)

    async def _serve_partition_fetch(self, channel: Channel, message: PartitionFetch) -> Message:
        return await self._data_service().transfer_source.handle(channel.remote.node_id, message)

    async def _serve_tombstone_check(self, channel: Channel, message: TombstoneCheck) -> Message:
        return await self._data_service().reaper.handle(message)

    async def _serve_tree(
        self, channel: Channel, message: TreeRoot | TreeBranches | TreeSegments | TreeKeys
    ) -> Message:
        return await self._data_service().anti_entropy.handle(message)

    async def _serve_replace(self, channel: Channel, message: ReplaceRequest) -> Message:
        return Reply(await self._operator.replace(message))

    async def _serve_members(self, channel: Channel, message: MembersRequest) -> Message:
        g = self._gossiper()
        return Reply(members_body(g.node_id, g.leader(), g.members(trio.current_time())))

    async def _serve_stats(self, channel: Channel, message: StatsRequest) -> Message:
        return Reply(statistics_body(self._statistics()))

    async def _serve_watch_request(self, channel: Channel, message: WatchRequest) -> Message:
        # RemoteError("too_many_watches") when over a watch cap.
        await self._nursery().start(self._subs.serve_watch, channel, message.prefix)
        return Reply({"ok": True})

    async def _serve_ring(self, channel: Channel, message: RingRequest) -> Message:
        return Reply(self._toolbox.ring())

    async def _serve_owners(self, channel: Channel, message: OwnersRequest) -> Message:
        return Reply(await self._toolbox.owners(message.key))

    async def _serve_ping(self, channel: Channel, message: PingRequest) -> Message:
        return Reply(await self._toolbox.ping())

    async def _serve_keys(self, channel: Channel, message: KeysRequest) -> Message:
        return Reply(await self._toolbox.keys(message))

    async def _serve_config(self, channel: Channel, message: ConfigRequest) -> Message:
        return Reply(self._effective_config())

    async def _serve_log_level(self, channel: Channel, message: LogLevelRequest) -> Message:
        return Reply(_admin.set_log_level(message.level))

    async def _serve_monitor_request(self, channel: Channel, message: MonitorRequest) -> Message:
        level = _admin.level_of(message.level)
        await self._nursery().start(self._subs.serve_monitor, channel, level)
        return Reply({"ok": True})

    async def _serve_set_metadata(self, channel: Channel, message: SetMetadataRequest) -> Message:
        self._gossiper().set_metadata(message.key, message.value)
        return Reply({"ok": True})

    async def _serve_remove(self, channel: Channel, message: RemoveRequest) -> Message:
        return Reply(await self._operator.remove(message.name))

    async def _serve_reload_tls(self, channel: Channel, message: ReloadTlsRequest) -> Message:
        try:
            # Reading the files is disk I/O: off the event loop.
            await trio.to_thread.run_sync(self._reload_tls)
        except ConfigError as exc:
            raise InvalidArgument(str(exc)) from exc
        return Reply({"ok": True})

    async def _serve_restore(self, channel: Channel, message: RestoreRequest) -> Message:
        return Reply(await self._data_service().restore(message.key, message.clock))

    async def _serve_repair(self, channel: Channel, message: RepairRequest) -> Message:
        return Reply(await self._data_service().repair_partition(message.partition))

    async def _serve_snapshot(self, channel: Channel, message: SnapshotRequest) -> Message:
        return Reply(await self._operator.snapshot(message.tag))

    async def _serve_leave(self, channel: Channel, message: LeaveRequest) -> Message:
        return Reply(self._decommission.request(message))


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


async def _complete_batch(
    kv: KeyValueService, message: ReplicaBatch, results: list[Message | Exception | None]
) -> None:
    """Answer the ops of a batch that have no result yet, concurrently (a log engine commits
    their writes together)."""

    async def one(index: int, op: ReplicaGet | ReplicaPut) -> None:
        try:
            results[index] = await kv.handle(op)
        except Exception as exc:
            results[index] = exc

    async with trio.open_nursery() as nursery:
        for index, op in enumerate(message.ops):
            if results[index] is None:
                nursery.start_soon(one, index, op)


def batch_reply(
    batch: ReplicaBatch, results: list[Message | Exception | None], remote: str
) -> ReplicaBatchReply:
    """The reply to ``batch`` from each op's answer (a ``ReplicaState``) or exception.

    Args:
      batch: the request.
      results: one per op, in order.
      remote: who asked (logged with an unexpected error).

    Returns:
      Each op's clock, or an error with what its own error reply would say; clocks past
      ``BATCH_REPLY_BYTES`` (after the first) are left out and answered ``batch_full``.
    """
    clocks: list[bytes | None] = []
    errors: list[BatchError] = []
    room = BATCH_REPLY_BYTES
    for index, (op, result) in enumerate(zip(batch.ops, results, strict=True)):
        if isinstance(result, ReplicaState):
            clock = result.clock
            if clock is not None:
                if len(clock) > room and room < BATCH_REPLY_BYTES:
                    errors.append(BatchError(index, "batch_full", "no room left in the batch"))
                    clocks.append(None)
                    continue
                room -= len(clock)
            clocks.append(clock)
            continue
        if isinstance(result, GossipKVError):
            result = _as_remote(result)
        elif not isinstance(result, Exception):
            what = "no answer" if result is None else f"unexpected answer {result.TAG}"
            result = RemoteError("internal", what)
        error = reply_for_exception(op, result, remote)
        errors.append(BatchError(index, error.code, error.message))
        clocks.append(None)
    return ReplicaBatchReply(tuple(clocks), tuple(errors))


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
