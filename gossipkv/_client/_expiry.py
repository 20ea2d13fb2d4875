"""The client's requests in flight and their deadlines: one queue, oldest first, and one task that
fails what got no answer within the request timeout (a cancel scope per request costs more than
the request itself)."""

from __future__ import annotations

from collections import deque

import trio

from .._errors import ConnectionClosed
from .._messages import Message
from .._peer import Channel


class PendingRequest:
    """A request waiting for its reply (or for its deadline)."""

    __slots__ = ("channel", "deadline", "done", "event", "reply", "request_id")

    def __init__(self, deadline: float, channel: Channel) -> None:
        self.deadline = deadline
        self.channel = channel
        self.request_id = 0
        self.event = trio.Event()
        self.done = False
        #: The answer, until the waiting caller takes it: the expiry queue keeps a finished
        #: request until its deadline comes round, and must not keep its reply that long (a
        #: scan of large pages held every page of the last ``request_timeout``).
        self.reply: Message | BaseException | None = None

    def finish(self, reply: Message | BaseException) -> None:
        if not self.done:
            self.done = True
            self.reply = reply
            self.event.set()

    def take(self) -> Message | BaseException:
        reply, self.reply = self.reply, None
        assert reply is not None
        return reply


class NotSent(Exception):
    """A request found its connection closed before anything was sent."""


class RequestExpiry:
    """The requests in flight, in deadline order (every request has the same timeout, so the
    order they were sent in), and the loop that expires them: :meth:`run` in the client's
    nursery."""

    def __init__(self, request_timeout: float) -> None:
        self._request_timeout = request_timeout
        self._pending: deque[PendingRequest] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    async def request(self, channel: Channel, message: Message) -> Message:
        """One request with the request timeout, timed by :meth:`run`.

        Raises:
          NotSent: the connection was already closed; nothing was sent.
          ConnectionClosed, trio.TooSlowError, RemoteError.
        """
        pending = PendingRequest(trio.current_time() + self._request_timeout, channel)
        try:
            pending.request_id = channel.request_nowait(message, pending.finish)
        except ConnectionClosed as exc:
            raise NotSent from exc
        except trio.WouldBlock:
            with trio.fail_after(self._request_timeout):
                return await channel.request(message)
        self._pending.append(pending)
        if len(self._pending) == 1:
            self._lot.unpark()
        try:
            await pending.event.wait()
        finally:
            if not pending.done:  # cancelled while waiting
                channel.cancel(pending.request_id)
        reply = pending.take()
        # Finished requests at the head leave the expiry queue now, not at their deadline.
        queue = self._pending
        while queue and queue[0].done:
            queue.popleft()
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def run(self) -> None:
        """Fail requests that got no answer within the request timeout (oldest first)."""
        slack = self._request_timeout / 16
        while True:
            if not self._pending:
                await self._lot.park()
                continue
            head = self._pending[0]
            if not head.done:
                await trio.sleep_until(head.deadline + slack)
            now = trio.current_time()
            while self._pending and (self._pending[0].done or self._pending[0].deadline <= now):
                late = self._pending.popleft()
                if not late.done:
                    late.channel.cancel(late.request_id)
                    late.finish(trio.TooSlowError())
