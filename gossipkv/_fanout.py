"""The runtime around one coordinated request's replies, and the deadline every one of them has.

A :class:`Fanout` wraps the sans-IO :class:`~gossipkv._replication.Tally` of one read or write
with what the runtime needs; :class:`FanoutExpiry` fails the replicas that did not answer in time.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import TypeVar

import trio

from ._errors import GossipKVError
from ._kv_model import Clock
from ._replication import Progress, Tally

log = logging.getLogger("gossipkv.kv")

_R = TypeVar("_R")


class Fanout:
    """The runtime around one request's :class:`~gossipkv._replication.Tally`: the events a
    waiting task needs, the callbacks the fast path needs, the cancels of requests still out,
    the deadline and the memory reservation.

    ``enough`` is set (and ``on_enough`` runs, once) when the tally has enough answers or every
    replica answered or failed, so an error can say how many did; ``done`` is set (and
    ``on_done`` runs) once every replica answered or failed. Whatever has not answered by
    ``deadline`` fails then (the service's expiry task calls :meth:`expire`). Call :meth:`check`
    after starting every request: with ``need`` 0 or no replicas at all, that is when it fires.
    Its deadline is ``timeout`` after it starts.
    """

    __slots__ = (
        "__weakref__",
        "_done_event",
        "_enough_event",
        "cancels",
        "deadline",
        "on_done",
        "on_enough",
        "on_reply",
        "release",
        "started",
        "tally",
    )

    def __init__(
        self,
        members: list[str],
        need: int,
        timeout: float,
        *,
        counted: set[str] | None = None,
        on_enough: Callable[[Fanout], None] | None = None,
        on_done: Callable[[Fanout], None] | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.tally = Tally(members, need, counted)
        self.started = trio.current_time()
        self.deadline = self.started + timeout
        # Events only for a task that waits (callers that pass callbacks never need one).
        self._enough_event: trio.Event | None = None
        self._done_event: trio.Event | None = None
        self.cancels: dict[str, Callable[[], None]] = {}
        self.on_enough = on_enough
        self.on_done = on_done
        #: Called with each replica's answer (the replica latency histogram).
        self.on_reply: Callable[[Fanout, str], None] | None = None
        #: Gives back the fan-out's memory reservation, once, when every replica answered.
        self.release = release

    @property
    def replies(self) -> dict[str, Clock | None]:
        return self.tally.replies

    @property
    def done(self) -> bool:
        return self.tally.done

    def answered(self, member: str, clock: Clock | None) -> None:
        if member not in self.tally.pending:
            return  # not asked, answered already, or given up on
        self.cancels.pop(member, None)
        progress = self.tally.answered(member, clock)
        if self.on_reply is not None:
            self.on_reply(self, member)
        self._fire(progress)

    def failed(self, member: str) -> None:
        self.cancels.pop(member, None)
        self._fire(self.tally.failed(member))

    def expire(self) -> None:
        """Give up on every replica that has not answered yet."""
        for cancel in list(self.cancels.values()):
            cancel()
        for member in list(self.tally.pending):
            self.failed(member)

    async def wait_enough(self) -> None:
        if self.tally.enough:
            await trio.lowlevel.checkpoint()
            return
        self._enough_event = self._enough_event or trio.Event()
        await self._enough_event.wait()

    async def wait_done(self) -> None:
        if self.tally.done:
            await trio.lowlevel.checkpoint()
            return
        self._done_event = self._done_event or trio.Event()
        await self._done_event.wait()

    def check(self) -> None:
        self._fire(self.tally.check())

    def _fire(self, progress: int) -> None:
        if progress & Progress.ENOUGH:
            if self._enough_event is not None:
                self._enough_event.set()
            if self.on_enough is not None:
                self.on_enough(self)
        if progress & Progress.DONE:
            if self._done_event is not None:
                self._done_event.set()
            release, self.release = self.release, None
            if release is not None:
                release()
            if self.on_done is not None:
                self.on_done(self)


def deliver(
    outcome: Callable[[Fanout], _R],
    on_result: Callable[[_R | GossipKVError], None],
    fan: Fanout,
) -> None:
    """Hand a finished fan-out's result (or its typed error) to a caller's callback."""
    try:
        result: _R | GossipKVError = outcome(fan)
    except GossipKVError as exc:
        result = exc
    on_result(result)


class FanoutExpiry:
    """Fails the replicas of fan-outs that did not answer by their deadline.

    Fan-outs are held weakly, oldest first: a finished one (and the clocks it collected) is
    freed as soon as its caller is done with it, not at its deadline.
    """

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._expiring: deque[tuple[float, weakref.ref[Fanout]]] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def track(self, fan: Fanout) -> None:
        self._expiring.append((fan.deadline, weakref.ref(fan)))
        if len(self._expiring) == 1:
            self._lot.unpark()

    async def run(self) -> None:
        """Fail the replicas of fan-outs that did not answer by their deadline.

        Deadlines only grow (one timeout for all), so the oldest fan-out is due first; waking
        a little after it (an eighth of the timeout) expires many in one go.
        """
        slack = self._timeout / 8
        expiring = self._expiring
        while True:
            if not expiring:
                await self._lot.park()
                continue
            deadline, ref = expiring[0]
            head = ref()
            if head is not None and not head.done:
                del head
                await trio.sleep_until(deadline + slack)
            now = trio.current_time()
            while expiring:
                deadline, ref = expiring[0]
                fan = ref()
                if fan is not None and not fan.done and deadline > now:
                    break
                expiring.popleft()
                if fan is None or fan.done:
                    continue
                try:
                    fan.expire()
                except Exception:
                    # A bug in a completion callback must not stop expiry (or the peer).
                    log.exception("completing an expired request failed")
                del fan
