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
  and :class:`~gossipkv.DecodeError` (reason ``too_large`` / ``truncated``) for a bad frame, checked
  before the body is read; after a ``DecodeError`` the connection is unusable and must be closed.
* Only one task sends on a connection at a time and only one receives (callers guarantee it).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable

import trio


class Connection(abc.ABC):
    """One bidirectional connection carrying framed payloads."""

    @property
    @abc.abstractmethod
    def remote_address(self) -> str:
        """The other end's address as ``host:port`` (for an accepted TCP connection, its socket)."""

    @abc.abstractmethod
    async def send(self, payload: bytes) -> None:
        """Send one payload."""

    async def send_many(self, payloads: list[bytes]) -> None:
        """Send several payloads in order; a transport may write them in one system call."""
        for payload in payloads:
            await self.send(payload)

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Receive the next payload."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the connection; idempotent."""


Handler = Callable[[Connection], Awaitable[None]]


class Transport(abc.ABC):
    """Opens connections and accepts them."""

    max_frame: int

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
