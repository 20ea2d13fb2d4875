"""What a node's connections send: one outbox per connection, and the node's frame counters.

An :class:`Outbox` is the queue of encoded frames for a connection's single writer (Request
Batch: frames queued while a write is in progress go out together in the next one) and the
push-back on whoever fills it. :class:`TransportCounters` are shared by all the channels of one
node.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import trio

from ._errors import ConnectionClosed, DecodeError
from .transport._base import Connection, SendStalled

log = logging.getLogger("gossipkv.peer")

_MAX_WRITE = 256  # frames per write


class TransportCounters:
    """Frame and byte counters shared by all channels of one node.

    ``refusals`` is the node's map of things refused to protect it (limits reached, timeouts),
    by reason; ``queued_bytes`` the bytes queued for sending on all its channels together.
    """

    def __init__(self, refusals: Counter[str] | None = None) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.queued_bytes = 0
        #: Called when queued bytes were written (or dropped with a closed connection): the data
        #: path's memory budget counts them, and its waiters may fit now.
        self.on_drain: Callable[[], None] | None = None
        self.dropped: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter() if refusals is None else refusals

    def count_decode_error(self, exc: DecodeError) -> None:
        """Count a bad frame: a frame deadline is a refusal, the rest are dropped frames."""
        if exc.reason == "frame_timeout":
            self.refusals["frame_timeout"] += 1
        else:
            self.dropped[exc.reason] += 1

    def refused_message(self, reason: str) -> None:
        """Count a message refused for who sent it (the connection is then closed)."""
        self.refusals[reason] += 1


class Outbox:
    """The frames one connection has queued for its writer, and the push-back on senders.

    Args:
      conn: the connection the frames are written to.
      counters: the node's counters (frames and bytes out, bytes queued on all connections).
      max_frames: frames queued (reserved ones included) beyond which the outbox is full.
      max_bytes: bytes queued (those being written included) beyond which it is full.
      pack: called by the writer, before it writes, while requests are reserved
        (:meth:`reserve`): turns them into frames (:meth:`put`) and gives the reservations
        back (:meth:`unreserve`).

    Senders that may wait call :meth:`wait_room` first; senders that cannot wait (replies made
    by callbacks) :meth:`put` regardless, and the channel's in-flight limit bounds that
    overshoot. A write that makes no progress for the transport's ``frame_timeout`` ends the
    writer (refusal ``send_timeout``).
    """

    __slots__ = (
        "_conn",
        "_counters",
        "_flushed",
        "_max_bytes",
        "_max_frames",
        "_pack",
        "_queue",
        "_reserved",
        "_room_lot",
        "_unsent",
        "_writer_lot",
        "closed",
        "queued_bytes",
    )

    def __init__(
        self,
        conn: Connection,
        counters: TransportCounters,
        *,
        max_frames: int,
        max_bytes: int,
        pack: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._counters = counters
        self._max_frames = max_frames
        self._max_bytes = max_bytes
        self._pack = pack
        self._queue: list[bytes] = []
        self._reserved = 0  # requests to be packed into frames; each counts as a frame
        self._unsent = 0  # frames and reservations not yet written
        #: Bytes queued: frames waiting and the ones being written.
        self.queued_bytes = 0
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._room_lot = trio.lowlevel.ParkingLot()
        self._flushed = trio.Event()
        self.closed = False

    @property
    def unsent(self) -> int:
        """Frames and reservations not yet written."""
        return self._unsent

    @property
    def waiting(self) -> int:
        """Frames waiting for the writer (reservations included; not those being written)."""
        return len(self._queue) + self._reserved

    def full(self) -> bool:
        return self.waiting >= self._max_frames or self.queued_bytes >= self._max_bytes

    async def wait_room(self) -> None:
        """Wait until the outbox is not full.

        Raises:
          ConnectionClosed: it closed meanwhile.
        """
        while self.full():
            if self.closed:
                raise ConnectionClosed("connection is closed")
            await self._room_lot.park()

    def put(self, payload: bytes) -> None:
        """Queue one encoded frame (never waits; see the class).

        Raises:
          ConnectionClosed: the outbox is closed.
        """
        if self.closed:
            raise ConnectionClosed("connection is closed")
        self._queue.append(payload)
        self._unsent += 1
        size = len(payload)
        self.queued_bytes += size
        counters = self._counters
        counters.queued_bytes += size
        counters.frames_out += 1
        counters.bytes_out += size
        if self._writer_lot:  # a writer already awake takes this frame too
            self._writer_lot.unpark()

    def reserve(self) -> None:
        """Hold a place for a request that ``pack`` will turn into a frame."""
        self._reserved += 1
        self._unsent += 1
        if self._writer_lot:
            self._writer_lot.unpark()

    def unreserve(self, count: int) -> None:
        """``pack`` took ``count`` reserved requests (sent as frames, or cancelled)."""
        self._reserved -= count
        self._unsent -= count

    async def flush(self) -> None:
        """Wait until everything queued so far has been written (or the outbox closed)."""
        while self._unsent > 0 and not self.closed:
            await self._flushed.wait()

    def _was_flushed(self) -> None:
        self._flushed.set()
        self._flushed = trio.Event()

    async def run(self) -> None:
        """Write queued frames until the outbox closes or the connection cannot carry more."""
        try:
            while not self.closed:
                if self._reserved:
                    self._pack()
                    if self._unsent == 0:  # all of them cancelled: nothing more to write
                        self._was_flushed()
                if not self._queue:
                    await self._writer_lot.park()
                    # Let the tasks already runnable queue their frames too: one write for all
                    # of them (a loopback send costs far more than a trip through the scheduler).
                    await trio.lowlevel.checkpoint()
                    continue
                if len(self._queue) <= _MAX_WRITE:
                    batch, self._queue = self._queue, []
                else:
                    batch = self._queue[:_MAX_WRITE]
                    del self._queue[:_MAX_WRITE]
                self._room_lot.unpark_all()
                await self._conn.send_many(batch)
                if self.closed:
                    break  # close() already took every queued byte off the counts
                sent = sum(len(payload) for payload in batch)
                self._unsent -= len(batch)
                del batch
                self.queued_bytes -= sent
                self._counters.queued_bytes -= sent
                if self._counters.on_drain is not None:
                    self._counters.on_drain()
                self._room_lot.unpark_all()
                if self._unsent == 0:
                    self._was_flushed()
        except SendStalled as exc:
            self._counters.refusals["send_timeout"] += 1
            log.warning("closing connection to %s: %s", self._conn.remote_address, exc)
        except ConnectionClosed:
            pass

    def close(self) -> None:
        """Drop what was not written (it no longer counts against the node) and wake everyone
        waiting on the outbox."""
        if self.closed:
            return
        self.closed = True
        self._counters.queued_bytes -= self.queued_bytes
        self.queued_bytes = 0
        if self._counters.on_drain is not None:
            self._counters.on_drain()
        self._queue.clear()
        self._reserved = 0
        self._writer_lot.unpark_all()
        self._room_lot.unpark_all()
        self._flushed.set()
