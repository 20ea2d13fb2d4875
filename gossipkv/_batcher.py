"""Small replica requests travelling together (Request Batch), with no trio and no I/O.

A channel hands :class:`ReplicaBatcher` the small ``ReplicaGet``/``ReplicaPut`` requests it is
asked to send; when its writer is free it takes them back as groups, each group one
``ReplicaBatch`` frame (a group of one goes as itself). Nothing waits for a batch to fill: what
is pending when the writer is free goes. The reply to a batch carries one clock or one error per
op, in order; :meth:`ReplicaBatcher.answers` turns it back into one answer per op, and names the
ops the receiver had no room for, to be sent again alone.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass, field

from ._errors import DecodeError
from ._messages import (
    MAX_BATCH_OPS,
    ErrorReply,
    Kind,
    Message,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
    ReplicaState,
)

#: A replica request larger than this (by a cheap upper bound) always travels alone...
BATCH_OP_BYTES = 8 * 1024
#: ...and a batch stays below this, so it never waits for the receiver's budget of large frames
#: (``SMALL_FRAME``) nor for the decode cost guard (``GUARD_THRESHOLD``).
BATCH_BYTES = 60 * 1024

ReplicaOp = ReplicaGet | ReplicaPut
#: One op of a batch: its own request id and its request.
Op = tuple[int, ReplicaOp]


def size_bound(message: ReplicaOp) -> int:
    """An upper bound of a replica request's encoded size, without encoding it."""
    if type(message) is ReplicaPut:
        return 4 * (len(message.key) + len(message.hint_for)) + len(message.clock) + 32
    return 4 * len(message.key) + 16


@dataclass(slots=True)
class Answers:
    """A batch reply split back into its ops: ``(request id, kind, message)`` for each op that
    has its answer, and the ops to send again alone (the receiver had no room for them)."""

    done: list[tuple[int, Kind, Message]] = field(default_factory=list)
    again: list[Op] = field(default_factory=list)


class ReplicaBatcher:
    """The batchable requests of one channel not yet written, and the batches in flight."""

    __slots__ = ("_batch_of", "_pending")

    def __init__(self) -> None:
        # (request id, request, size bound), in the order they were asked for.
        self._pending: list[tuple[int, ReplicaOp, int]] = []
        # The batch frame's id each op in flight travels in.
        self._batch_of: dict[int, int] = {}

    def __len__(self) -> int:
        """Requests waiting to be packed."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """Ops sent in batches whose answer has not come (nor been forgotten)."""
        return len(self._batch_of)

    def add(self, request_id: int, message: ReplicaOp, bound: int) -> None:
        self._pending.append((request_id, message, bound))

    def take(self, wanted: Container[int]) -> tuple[int, list[list[Op]]]:
        """Pack what is pending: ``(how many were pending, groups)``. A group holds at most
        ``MAX_BATCH_OPS`` ops and ``BATCH_BYTES``; requests not in ``wanted`` (cancelled) are
        left out."""
        pending, self._pending = self._pending, []
        groups: list[list[Op]] = []
        group: list[Op] = []
        size = 0
        for request_id, message, bound in pending:
            if request_id not in wanted:
                continue
            if group and (len(group) >= MAX_BATCH_OPS or size + bound > BATCH_BYTES):
                groups.append(group)
                group, size = [], 0
            group.append((request_id, message))
            size += bound
        if group:
            groups.append(group)
        return len(pending), groups

    def sent(self, batch_id: int, group: list[Op]) -> None:
        """Remember that ``group`` went out as frame ``batch_id``."""
        for request_id, _ in group:
            self._batch_of[request_id] = batch_id

    def forget(self, request_id: int) -> int | None:
        """An op was cancelled: the id of the batch it travels in, if any."""
        return self._batch_of.pop(request_id, None)

    def answers(self, group: list[Op], kind: Kind, message: Message) -> Answers:
        """Split the reply to a batch into one answer per op (an error reply answers all).

        Raises:
          DecodeError: ``bad_batch``: the reply does not answer this batch.
        """
        out = Answers()
        for request_id, _ in group:
            self._batch_of.pop(request_id, None)
        if kind is Kind.ERROR:
            out.done = [(request_id, kind, message) for request_id, _ in group]
            return out
        if not isinstance(message, ReplicaBatchReply) or len(message.clocks) != len(group):
            got = len(message.clocks) if isinstance(message, ReplicaBatchReply) else message.TAG
            raise DecodeError("bad_batch", f"a batch of {len(group)} ops answered with {got}")
        errors = {e.index: e for e in message.errors} if message.errors else None
        done = out.done
        for i, (request_id, sent) in enumerate(group):
            error = errors.get(i) if errors is not None else None
            if error is None:
                done.append((request_id, Kind.RESPONSE, ReplicaState(message.clocks[i])))
            elif error.code == "batch_full":
                out.again.append((request_id, sent))
            else:
                done.append((request_id, Kind.ERROR, ErrorReply(error.code, error.message)))
        return out

    def clear(self) -> None:
        self._pending.clear()
        self._batch_of.clear()
