"""The real transport: length-prefixed frames over TCP.

It owns the byte stream of each connection: framing (4-byte big-endian length + payload, see
``_codec.frame_header``), the ``max_frame`` check made *before* a body is read, and translating
Trio/OS errors into :class:`~gossipkv.TransportError` / :class:`~gossipkv.ConnectionClosed` once,
at this edge. Pattern: a framed stream with one writer (a ``trio.Lock``) and one reader that owns
a receive buffer; the accept loop is ``trio.serve_listeners`` with a handler that never lets an
exception escape, so one bad connection cannot take the server down.
"""

from __future__ import annotations

import logging
import os
import socket

import trio

from gossipkv._codec import DEFAULT_MAX_FRAME, FRAME_HEADER, frame_length
from gossipkv._errors import ConfigError, ConnectionClosed, DecodeError, TransportError
from gossipkv._types import Address

from ._base import Connection, Handler, Transport

_log = logging.getLogger("gossipkv.transport")

# How much one receive_some may return. The receive buffer holds at most one frame (bounded by
# max_frame, checked before the body is read) plus one chunk.
_CHUNK = 64 * 1024
_MAX_WIRE_LENGTH = 2 ** (8 * FRAME_HEADER) - 1

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _parse(address: str) -> Address:
    try:
        return Address.parse(address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _describe(exc: BaseException) -> str:
    """One short lower-case line for an OSError (digging into trio's connect ExceptionGroup)."""
    leaf: BaseException = exc
    while True:
        cause = leaf.__cause__
        if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
            leaf = cause.exceptions[-1]
        elif isinstance(cause, OSError):
            leaf = cause
        else:
            break
    if isinstance(leaf, socket.gaierror) and leaf.strerror:
        text = leaf.strerror
    elif isinstance(leaf, OSError) and leaf.errno is not None and leaf.errno > 0:
        # trio's own messages embed the socket address tuple; the errno alone reads better
        text = os.strerror(leaf.errno)
    else:
        text = str(leaf) or type(leaf).__name__
    return text[:1].lower() + text[1:]


class TcpConnection(Connection):
    """One TCP connection carrying framed payloads (see :class:`Connection` for the contract)."""

    def __init__(self, stream: trio.SocketStream, *, max_frame: int) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._send_lock = trio.Lock()
        self._buffer = bytearray()
        self._closed = False
        self._broken: DecodeError | None = None
        # trio already sets TCP_NODELAY on every SocketStream; set it explicitly because gossip
        # frames are small and must not wait for Nagle.
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        peer = stream.socket.getpeername()
        self._remote = str(Address(str(peer[0]), int(peer[1])))

    @property
    def remote_address(self) -> str:
        return self._remote

    async def send(self, payload: bytes) -> None:
        """Send one payload as one frame.

        Payloads over ``max_frame`` are sent anyway: the receiver enforces its own limit.

        Raises:
          ConnectionClosed: the connection was closed at either end or broke.
          ValueError: the payload does not fit a 4-byte length prefix.
        """
        await self.send_many([payload])

    async def send_many(self, payloads: list[bytes]) -> None:
        """Send several payloads, in order, as consecutive frames in one write (Request Batch).

        Raises:
          ConnectionClosed: the connection was closed at either end or broke.
          ValueError: a payload does not fit a 4-byte length prefix.
        """
        if self._closed:
            raise ConnectionClosed(f"connection to {self._remote} is closed")
        parts: list[bytes] = []
        for payload in payloads:
            if len(payload) > _MAX_WIRE_LENGTH:
                raise ValueError(f"payload of {len(payload)} bytes does not fit a frame")
            parts.append(len(payload).to_bytes(FRAME_HEADER, "big"))
            parts.append(payload)
        frame = b"".join(parts)
        async with self._send_lock:
            try:
                await self._stream.send_all(frame)
            except _STREAM_ERRORS as exc:
                raise ConnectionClosed(
                    f"connection to {self._remote} closed: {_describe(exc)}"
                ) from exc

    async def receive(self) -> bytes:
        """Receive the next payload.

        Raises:
          ConnectionClosed: clean end of stream between frames, a broken or closed connection, or
            any call after a ``DecodeError``.
          DecodeError: ``too_large`` (length over ``max_frame``; the body is never read) or
            ``truncated`` (end of stream inside a frame).
        """
        if self._closed:
            raise ConnectionClosed(f"connection to {self._remote} is closed")
        if self._broken is not None:
            raise ConnectionClosed(
                f"connection to {self._remote} is unusable after a bad frame: {self._broken}"
            )
        buffer = self._buffer
        if len(buffer) >= FRAME_HEADER:
            # Fast path: a whole frame is already buffered (frames arrive in batches).
            length = int.from_bytes(buffer[:FRAME_HEADER], "big")
            end = FRAME_HEADER + length
            if length <= self._max_frame and len(buffer) >= end:
                payload = bytes(buffer[FRAME_HEADER:end])
                del buffer[:end]
                return payload
        try:
            header = await self._read_exactly(FRAME_HEADER, frame_start=True)
            length = frame_length(header, max_frame=self._max_frame)
            return await self._read_exactly(length, frame_start=False)
        except DecodeError as exc:
            self._broken = exc
            raise

    async def _read_exactly(self, count: int, *, frame_start: bool) -> bytes:
        while len(self._buffer) < count:
            try:
                chunk = await self._stream.receive_some(_CHUNK)
            except _STREAM_ERRORS as exc:
                raise ConnectionClosed(
                    f"connection to {self._remote} closed: {_describe(exc)}"
                ) from exc
            if not chunk:
                if frame_start and not self._buffer:
                    raise ConnectionClosed(f"connection closed by {self._remote}")
                raise DecodeError(
                    "truncated",
                    f"connection from {self._remote} ended inside a frame "
                    f"({len(self._buffer)} of {count} bytes)",
                )
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def aclose(self) -> None:
        """Close the connection; idempotent. A task blocked in ``receive`` gets ConnectionClosed."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        await self._stream.aclose()


class TcpTransport(Transport):
    """Framed connections over TCP.

    Args:
      max_frame: the largest payload ``receive`` accepts; a longer length prefix raises
        ``DecodeError("too_large")`` before the body is read.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ConfigError(f"max_frame must be >= 0, got {max_frame}")
        self.max_frame = max_frame

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``address`` (port 0 picks a free port) until cancelled.

        Reports ``"host:port"`` with the real port through ``task_status``. Each accepted
        connection runs ``handler(conn)`` in its own task; the stream is closed when the handler
        returns. An exception escaping a handler is logged and does not stop the server.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
          TransportError: the address cannot be bound (in use, unknown host, not local).
        """
        where = _parse(address)
        try:
            listeners = await trio.open_tcp_listeners(where.port, host=where.host)
        except OSError as exc:
            raise TransportError(f"cannot listen on {where}: {_describe(exc)}") from exc
        max_frame = self.max_frame

        async def run_handler(stream: trio.SocketStream) -> None:
            # serve_listeners closes the stream (aclose_forcefully) after this returns.
            try:
                conn = TcpConnection(stream, max_frame=max_frame)
            except OSError:
                return  # the peer reset the connection before we looked at it
            try:
                await handler(conn)
            except Exception:
                _log.exception("connection handler for %s failed", conn.remote_address)

        try:
            port = listeners[0].socket.getsockname()[1]
            task_status.started(str(Address(where.host, int(port))))
            await trio.serve_listeners(run_handler, listeners)
        finally:
            for listener in listeners:
                await trio.aclose_forcefully(listener)

    async def connect(self, address: str) -> Connection:
        """Open a TCP connection to ``address``.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
          TransportError: refused, unreachable, or the host does not resolve.
        """
        where = _parse(address)
        try:
            stream = await trio.open_tcp_stream(where.host, where.port)
        except OSError as exc:
            raise TransportError(f"cannot connect to {where}: {_describe(exc)}") from exc
        except (ValueError, UnicodeError) as exc:  # e.g. an over-long DNS label (idna)
            raise TransportError(f"cannot connect to {where}: {exc}") from exc
        try:
            return TcpConnection(stream, max_frame=self.max_frame)
        except OSError as exc:
            await trio.aclose_forcefully(stream)
            raise TransportError(f"cannot connect to {where}: {_describe(exc)}") from exc
