"""Admission of data-path work by the memory it holds: a byte budget.

A read of a 1 MiB value holds a megabyte per replica that answers, the merged clock and the
reply until the reply is sent; a client that pipelines tiny reads of such a key (and never reads
the replies) could otherwise make a peer hold gigabytes. Every read and write a peer coordinates
first reserves an estimate of the bytes it will hold from one :class:`ByteBudget`; work that does
not fit waits (its connection stops being read, which pushes back on the client through TCP) until
earlier work finishes. Replies already queued for sending but not yet written (a client that does
not read them) count against the same budget, until they are written or their connection closes.
One operation larger than the whole budget is admitted alone, so nothing is refused for being
large, only made to wait.
"""

from __future__ import annotations

from collections.abc import Callable

import trio


class ByteBudget:
    """A weighted semaphore over bytes.

    Args:
      capacity: the bytes that may be reserved at once.
      external: bytes held elsewhere that count against the capacity too (replies queued for
        sending); call :meth:`wake` when they shrink.

    Attributes:
      capacity: as given.
      used: bytes reserved now.
      waits: reservations that had to wait for room.
    """

    def __init__(self, capacity: int, external: Callable[[], int] | None = None) -> None:
        if capacity < 1:
            raise ValueError("a byte budget needs a capacity of at least 1 byte")
        self.capacity = capacity
        self._external = external if external is not None else (lambda: 0)
        self.used = 0
        self.waits = 0
        self._lot = trio.lowlevel.ParkingLot()

    def try_acquire(self, size: int) -> bool:
        """Reserve ``size`` bytes if they fit now and nobody is waiting before us."""
        if self._lot.statistics().tasks_waiting:
            return False
        return self._take(size)

    async def acquire(self, size: int) -> None:
        """Reserve ``size`` bytes, waiting for room."""
        if self.try_acquire(size):
            await trio.lowlevel.checkpoint()
            return
        self.waits += 1
        while True:
            await self._lot.park()
            if self._take(size):
                return

    def _take(self, size: int) -> bool:
        held = self.used + self._external()
        if held and held + size > self.capacity:
            return False
        self.used += size
        return True

    def wake(self) -> None:
        """Let the waiters try again (the external usage shrank)."""
        if self._lot.statistics().tasks_waiting:
            self._lot.unpark_all()

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved earlier."""
        self.used -= size
        # Wake the waiters in order; each takes its turn only if it fits (the rest park again).
        self._lot.unpark_all()
