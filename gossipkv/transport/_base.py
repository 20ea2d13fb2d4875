"""The Transport interface: framed byte messages between addresses.

A transport moves opaque payloads (each one CBOR envelope produced by ``_codec``) over
connections. The real one is TCP (``_tcp.py``); the simulated one lives in
``gossipkv.testing``. Both pass one conformance suite (``tests/transport``).

Semantics every implementation keeps:

* ``serve`` binds, calls ``task_status.started(bound_address)``, then runs ``handler(conn)`` in
  its own task for each accepted connection; the connection is closed when the handler returns.
* ``Connection.send`` delivers payloads in order or not at all (the simulated network may drop,
  duplicate or reorder when told to); it raises :class:`~gossipkv.ConnectionClosed` once the
  connection is closed at either end.
* ``Connection.receive`` returns the next payload; it raises ``ConnectionClosed`` at end of stream
  and :class:`~gossipkv.DecodeError` for a bad frame: ``too_large`` (the length prefix is over the
  connection's ``max_frame``, checked before the body is read), ``truncated`` (end of stream
  inside a frame) or ``frame_timeout`` (the body did not arrive within the transport's
  ``frame_timeout`` of its header). After a ``DecodeError`` the connection is unusable and must
  be closed.
* Each connection has its own ``max_frame``, starting at the transport's; its owner may change it
  between frames (the node accepts only small frames until the ``hello`` exchange is done).
* ``send`` and ``send_many`` raise :class:`SendStalled` (a ``ConnectionClosed``) when a piece
  of at most 64 KiB could not be written within the transport's ``frame_timeout``: the other
  side stopped reading. The connection is then closed.
* A body over ``SMALL_FRAME`` bytes is received only after reserving its length from the
  transport's ``receive_budget`` (when it has one); ``receive`` returns the reservation before it
  returns the payload, so the caller decodes the payload before its next checkpoint (as the
  node's channels do) to keep the bytes it holds within the budget.
* Only one task sends on a connection at a time and only one receives (callers guarantee it).
"""

from __future__ import annotations

import abc
import math
from collections import deque
from collections.abc import Awaitable, Callable

import trio

from gossipkv._errors import ConnectionClosed
from gossipkv._limits import SMALL_FRAME as SMALL_FRAME

from ._tls import TLSIdentity


class SendStalled(ConnectionClosed):
    """A write made no progress for the transport's ``frame_timeout``: the other side does not
    read. The connection is closed (its state mid-write is unknown)."""


class ReceiveBudget:
    """Bytes of large frame bodies that may be in the middle of arriving at once (node-wide).

    A connection reserves a body's length after its header arrived and before reading it, and
    releases it once the body is read (or the read failed). Reservations are granted in arrival
    order; one larger than the whole budget takes all of it.

    Args:
      capacity: the budget in bytes (at least 1).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a receive budget must be >= 1 byte, got {capacity}")
        self.capacity = capacity
        self._available = capacity
        self._waiters: deque[tuple[int, trio.Event]] = deque()

    @property
    def reserved(self) -> int:
        """Bytes reserved now."""
        return self.capacity - self._available

    @property
    def waiting(self) -> int:
        """Reservations waiting for bytes to be released."""
        return len(self._waiters)

    async def reserve(self, size: int) -> int:
        """Wait until ``size`` bytes (at most ``capacity``) are free and take them.

        Returns:
          The bytes reserved: pass them to :meth:`release`. If the wait is cancelled, nothing
          stays reserved.
        """
        size = min(size, self.capacity)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not self._waiters and self._available >= size:
            self._available -= size
            await trio.lowlevel.cancel_shielded_checkpoint()
            return size
        entry = (size, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.release(size)  # granted just as the wait was cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._grant()  # a smaller reservation behind it may fit now
            raise
        return size

    def release(self, size: int) -> None:
        """Return ``size`` bytes taken by :meth:`reserve`."""
        self._available += size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._available >= self._waiters[0][0]:
            size, event = self._waiters.popleft()
            self._available -= size
            event.set()


class Connection(abc.ABC):
    """One bidirectional connection carrying framed payloads.

    Attributes:
      max_frame: the largest payload :meth:`receive` accepts now (see the module docstring).
    """

    max_frame: int

    @property
    @abc.abstractmethod
    def remote_address(self) -> str:
        """The other end's address as ``host:port`` (for an accepted TCP connection, its socket)."""

    @property
    def tls_identity(self) -> TLSIdentity | None:
        """Who the other end's TLS certificate says it is (``None`` without TLS)."""
        return None

    @abc.abstractmethod
    async def send(self, payload: bytes) -> None:
        """Send one payload."""

    async def send_many(self, payloads: list[bytes]) -> None:
        """Send several payloads in order; a transport may write them in one system call."""
        for payload in payloads:
            await self.send(payload)

    async def send_in_clear(self, payload: bytes) -> None:
        """Send one payload outside TLS, on a connection whose TLS handshake failed: how a TLS
        peer tells a plaintext client that it requires TLS. Without TLS: :meth:`send`."""
        await self.send(payload)

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Receive the next payload."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; idempotent."""


Handler = Callable[[Connection], Awaitable[None]]


class Transport(abc.ABC):
    """Opens connections and accepts them.

    Attributes:
      max_frame: the ``max_frame`` every new connection starts with.
      frame_timeout: seconds a frame's body may take once its header arrived (``math.inf``: no
        limit); the node sets it from its :class:`~gossipkv.NetworkLimits`.
      receive_budget: shared by every connection of this transport, or ``None`` (no budget);
        the node sets it from its :class:`~gossipkv.NetworkLimits`.
    """

    max_frame: int
    frame_timeout: float = math.inf
    receive_budget: ReceiveBudget | None = None

    @abc.abstractmethod
    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` until cancelled; report the bound address through ``task_status``.

        Raises:
          TransportError: if the address cannot be bound (in use, bad host).
        """

    @abc.abstractmethod
    async def connect(self, address: str) -> Connection:
        """Open a connection to ``address``.

        Raises:
          TransportError: refused or unreachable. Callers bound the wait with their own
          ``trio.move_on_after``.
        """

    async def wait_runnable(self) -> None:
        """Block while this transport's process is paused (simulation only; real: returns)."""
        return

    def runnable(self) -> bool:
        """False while this transport's process is paused or crashed (simulation only)."""
        return True
