"""The real transport: length-prefixed frames over TCP.

It owns the byte stream of each connection: framing (4-byte big-endian length + payload, see
``_codec.frame_header``), the per-connection ``max_frame`` check made *before* a body is read,
the frame deadline and receive budget, and translating Trio/OS errors into
:class:`~gossipkv.TransportError` / :class:`~gossipkv.ConnectionClosed` once, at this edge.
Pattern: a framed stream with one writer (a ``trio.Lock``) and one reader that owns a receive
buffer; an accept loop per listener whose handler never lets an exception escape, so one bad
connection cannot take the server down, and which rides out descriptor exhaustion (EMFILE) by
backing off with one log line a minute instead of a traceback per attempt.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from gossipkv._codec import DEFAULT_MAX_FRAME, FRAME_HEADER, frame_length
from gossipkv._errors import (
    ConfigError,
    ConnectionClosed,
    ConnectionRefused,
    DecodeError,
    TransportError,
)
from gossipkv._types import Address

from ._base import SMALL_FRAME, Connection, Handler, ReceiveBudget, SendStalled, Transport
from ._tls import TLSConfig, TLSHandshakeFailed, TLSIdentity, handshake_failure, identity_of

_log = logging.getLogger("gossipkv.transport")

# How much one receive_some may return. The receive buffer holds at most one chunk; a body
# larger than that is read in chunks of its own and joined once (its length was checked against
# max_frame and reserved from the receive budget before any of it was read).
_CHUNK = 64 * 1024
_MAX_WIRE_LENGTH = 2 ** (8 * FRAME_HEADER) - 1
# Reads of a plaintext socket that found data at once, after which the reader yields anyway.
_CHECKPOINT_EVERY = 16

# accept() failures that mean "out of descriptors or kernel memory for now": back off and retry.
_ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_ACCEPT_BACKOFF = (0.1, 1.0)  # first and longest pause after a capacity error, in seconds
_ACCEPT_LOG_EVERY = 60.0  # seconds between log lines about capacity errors

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
# The first bytes of a TLS record (handshake, alert) with a TLS major version: what a plaintext
# end sees as a frame header when the other end speaks TLS.
_TLS_RECORD_TYPES = (0x15, 0x16)


def _parse(address: str) -> Address:
    try:
        return Address.parse(address)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _raw_socket(stream: trio.SocketStream) -> socket.socket | None:
    """The OS socket under ``stream`` (non-blocking; trio keeps it as ``_sock``), or ``None``
    when this trio keeps it elsewhere: then the stream's own methods are used."""
    raw = getattr(stream.socket, "_sock", None)
    return raw if isinstance(raw, socket.socket) else None


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
    """One TCP connection carrying framed payloads (see :class:`Connection` for the contract).

    With an SSL context the frames travel inside TLS (``trio.SSLStream``); the TLS handshake
    runs with the first send or receive, so it is bounded by whatever deadline the caller put on
    its ``hello`` exchange, and a failed one raises :class:`TLSHandshakeFailed`.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        transport: TcpTransport,
        tls: ssl.SSLContext | None = None,
        *,
        server_side: bool = False,
    ) -> None:
        self._stream: trio.abc.Stream = (
            stream if tls is None else trio.SSLStream(stream, tls, server_side=server_side)
        )
        self._tls = tls is not None
        self._server_side = server_side
        self._frames_in = 0
        self._transport = transport
        self.max_frame = transport.max_frame
        self._send_lock = trio.Lock()
        # Plaintext frames are read and written on the socket itself (see _recv and _write):
        # trio's stream would add two trips through the scheduler to every send and receive.
        self._raw = None if tls is not None else _raw_socket(stream)
        self._reads_without_wait = 0
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

    @property
    def tls_identity(self) -> TLSIdentity | None:
        """The other end's certificate identity (TLS, after the handshake), else ``None``."""
        if not isinstance(self._stream, trio.SSLStream):
            return None
        try:
            return identity_of(self._stream.getpeercert())
        except (trio.NeedHandshakeError, ValueError):
            return None

    def _stream_error(self, exc: BaseException) -> ConnectionClosed:
        # A TLS failure before the first frame arrived is the handshake's (with TLS 1.3 a
        # client learns that its certificate was refused only on its first read).
        if self._tls and not self._frames_in:
            return handshake_failure(exc, self._remote, server_side=self._server_side)
        return ConnectionClosed(f"connection to {self._remote} closed: {_describe(exc)}")

    async def send(self, payload: bytes) -> None:
        """Send one payload as one frame.

        Payloads over ``max_frame`` are sent anyway: the receiver enforces its own limit.

        Raises:
          ConnectionClosed: the connection was closed at either end or broke.
          ValueError: the payload does not fit a 4-byte length prefix.
        """
        await self.send_many([payload])

    async def send_many(self, payloads: list[bytes]) -> None:
        """Send several payloads, in order, as consecutive frames (Request Batch).

        Small frames go out joined in one write; a payload over 64 KiB is written on its own
        after its header, never copied into a joined buffer.

        Raises:
          SendStalled: 64 KiB could not be written within ``frame_timeout`` (the other side
            stopped reading); the connection is closed.
          ConnectionClosed: the connection was closed at either end or broke.
          ValueError: a payload does not fit a 4-byte length prefix.
        """
        if self._closed:
            raise ConnectionClosed(f"connection to {self._remote} is closed")
        writes: list[bytes] = []
        parts: list[bytes] = []
        for payload in payloads:
            if len(payload) > _MAX_WIRE_LENGTH:
                raise ValueError(f"payload of {len(payload)} bytes does not fit a frame")
            parts.append(len(payload).to_bytes(FRAME_HEADER, "big"))
            if len(payload) > _CHUNK:
                writes.append(b"".join(parts))
                writes.append(payload)
                parts = []
            else:
                parts.append(payload)
        if parts:
            writes.append(b"".join(parts))
        lock = self._send_lock
        try:
            lock.acquire_nowait()  # the usual case (one writer per channel): no scheduler trip
        except trio.WouldBlock:
            await lock.acquire()
        try:
            for data in writes:
                await self._write(data)
        except _STREAM_ERRORS as exc:
            raise self._stream_error(exc) from exc
        finally:
            lock.release()

    async def _send_tls_alert(self) -> None:
        """Send the alert OpenSSL wrote when it refused the other end's handshake (its
        certificate expired, another CA): trio's SSLStream leaves it unsent, and without it the
        other end only sees the connection close."""
        stream = self._stream
        outgoing = getattr(stream, "_outgoing", None)  # trio's memory BIO, private: best effort
        if not isinstance(stream, trio.SSLStream) or not isinstance(outgoing, ssl.MemoryBIO):
            return
        data = outgoing.read()
        if data:
            with trio.move_on_after(1.0):
                try:
                    await stream.transport_stream.send_all(data)
                except (*_STREAM_ERRORS, trio.BusyResourceError):
                    pass

    async def send_in_clear(self, payload: bytes) -> None:
        """Write one frame on the raw socket, under any TLS (see :class:`Connection`)."""
        stream = self._stream
        if isinstance(stream, trio.SSLStream):
            raw = stream.transport_stream
            try:
                with trio.move_on_after(1.0):
                    await raw.send_all(len(payload).to_bytes(FRAME_HEADER, "big") + payload)
            except _STREAM_ERRORS as exc:
                raise ConnectionClosed(f"connection to {self._remote} closed") from exc
            return
        await self.send(payload)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        raw = self._raw
        if raw is not None:
            # Most writes fit the socket's buffer: done at once, with no deadline to arm.
            try:
                sent = raw.send(view)
            except BlockingIOError:
                sent = 0
            if sent == len(view):
                return
            view = view[sent:]
        timeout = self._transport.frame_timeout
        if timeout == math.inf:
            await self._stream.send_all(view)
            return
        # Piece by piece, each with the deadline: a slow reader is fine, one that stopped is not.
        for start in range(0, len(view), _CHUNK):
            with trio.move_on_after(timeout):
                await self._stream.send_all(view[start : start + _CHUNK])
                continue
            self._closed = True
            await trio.aclose_forcefully(self._stream)
            raise SendStalled(
                f"connection to {self._remote}: no write progress for {timeout:g} s "
                "(it does not read)"
            )

    async def receive(self) -> bytes:
        """Receive the next payload.

        Raises:
          ConnectionClosed: clean end of stream between frames, a broken or closed connection, or
            any call after a ``DecodeError``.
          DecodeError: ``too_large`` (length over ``max_frame``; the body is never read),
            ``truncated`` (end of stream inside a frame) or ``frame_timeout`` (the body did not
            arrive within the transport's ``frame_timeout``).
        """
        if self._closed:
            raise ConnectionClosed(f"connection to {self._remote} is closed")
        if self._broken is not None:
            raise ConnectionClosed(
                f"connection to {self._remote} is unusable after a bad frame: {self._broken}"
            )
        buffer = self._buffer
        while len(buffer) < FRAME_HEADER:
            # Between frames a connection may stay quiet for as long as it likes.
            chunk = await self._receive_chunk(_CHUNK, True, FRAME_HEADER)
            buffer += chunk
        header = bytes(buffer[:FRAME_HEADER])
        try:
            if not self._frames_in and not self._tls:
                self._refuse_tls(header)
            length = frame_length(header, max_frame=self.max_frame)
        except DecodeError as exc:
            self._broken = exc
            raise
        if len(buffer) >= FRAME_HEADER + length:
            # The usual case: the whole frame came with its header (frames arrive in batches).
            payload = self._take(length)
        else:
            try:
                payload = await self._read_body(length)
            except DecodeError as exc:
                self._broken = exc
                raise
        self._frames_in += 1
        return payload

    def _refuse_tls(self, header: bytes) -> None:
        """A plaintext connection whose first bytes are a TLS record: say so, not "too large"."""
        if header[0] not in _TLS_RECORD_TYPES or header[1] != 0x03:
            return
        if header[0] == 0x16:
            failure = TLSHandshakeFailed(
                "tls_not_enabled",
                f"{self._remote} started a TLS handshake, but this end runs without TLS "
                "(give it --tls-dir too, or connect without TLS)",
            )
        else:
            failure = TLSHandshakeFailed(
                "tls_required",
                f"{self._remote} answered with TLS: it requires TLS (use --tls-dir)",
            )
        self._broken = DecodeError(failure.reason, str(failure))
        raise failure

    async def _read_body(self, length: int) -> bytes:
        """The body of the frame whose header starts the buffer, and the frame taken off it.

        A body of up to ``_CHUNK`` bytes is gathered in the buffer behind its header, so a
        receive cancelled meanwhile loses nothing: the next one finds the frame where it was.
        A larger one is read in pieces of its own (see ``_read_large``); a cancellation inside
        it leaves the connection unusable."""
        transport = self._transport
        budget = transport.receive_budget if length > SMALL_FRAME else None
        reserved = 0 if budget is None else await budget.reserve(length)
        try:
            if transport.frame_timeout == math.inf:
                return await self._read_frame(length)
            with trio.move_on_after(transport.frame_timeout):
                return await self._read_frame(length)
            raise DecodeError(
                "frame_timeout",
                f"connection from {self._remote}: a frame of {length} bytes did not arrive "
                f"within {transport.frame_timeout:g} s",
            )
        finally:
            if budget is not None:
                budget.release(reserved)

    async def _read_frame(self, length: int) -> bytes:
        buffer = self._buffer
        end = FRAME_HEADER + length
        if length > _CHUNK:
            try:
                return await self._read_large(length)
            except trio.Cancelled:
                self._broken = DecodeError("cancelled", "a receive was cancelled inside a frame")
                raise
        while len(buffer) < end:
            buffer += await self._receive_chunk(_CHUNK, False, length, len(buffer) - FRAME_HEADER)
        return self._take(length)

    def _take(self, length: int) -> bytes:
        """The body of the whole frame that starts the buffer, taken off it with its header."""
        end = FRAME_HEADER + length
        payload = bytes(self._buffer[FRAME_HEADER:end])
        del self._buffer[:end]
        return payload

    async def _read_large(self, count: int) -> bytes:
        # Chunks of exactly what is missing, joined once: the frame is in memory twice only
        # for that join (a growing bytearray would copy it on every reallocation).
        buffer = self._buffer
        parts = [bytes(buffer[FRAME_HEADER : FRAME_HEADER + count])]
        got = len(parts[0])
        del buffer[: FRAME_HEADER + count]
        while got < count:
            chunk = await self._receive_chunk(min(_CHUNK, count - got), False, count, got)
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    async def _receive_chunk(
        self, max_bytes: int, frame_start: bool, count: int, got: int | None = None
    ) -> bytes:
        chunk: bytes | bytearray
        try:
            if self._raw is not None:
                chunk = await self._recv(self._raw, max_bytes)
            else:
                chunk = await self._stream.receive_some(max_bytes)
        except _STREAM_ERRORS as exc:
            if self._tls and self._server_side and not self._frames_in:
                await self._send_tls_alert()
            raise self._stream_error(exc) from exc
        if not chunk:
            have = len(self._buffer) if got is None else got
            if frame_start and not have:
                raise ConnectionClosed(f"connection closed by {self._remote}")
            raise DecodeError(
                "truncated",
                f"connection from {self._remote} ended inside a frame ({have} of {count} bytes)",
            )
        return chunk if isinstance(chunk, bytes) else bytes(chunk)

    async def _recv(self, raw: socket.socket, max_bytes: int) -> bytes:
        """Read what the socket holds, waiting (a checkpoint) only when it holds nothing.

        After ``_CHECKPOINT_EVERY`` reads that did not wait, the next one yields to the scheduler
        first, so a peer that keeps the socket full cannot starve the other tasks or outrun a
        cancellation. Both yields come before the read: a cancelled reader loses no bytes."""
        if self._reads_without_wait >= _CHECKPOINT_EVERY:
            self._reads_without_wait = 0
            await trio.lowlevel.checkpoint()
        while True:
            try:
                chunk = raw.recv(max_bytes)
            except BlockingIOError:
                self._reads_without_wait = 0
                await trio.lowlevel.wait_readable(raw)
                continue
            self._reads_without_wait += 1
            return chunk

    async def aclose(self) -> None:
        """Close the connection; idempotent. A task blocked in ``receive`` gets ConnectionClosed."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._tls:
            # No close_notify dance with a peer that may be gone: TLS adds nothing to a close.
            await trio.aclose_forcefully(self._stream)
            return
        await self._stream.aclose()


class TcpTransport(Transport):
    """Framed connections over TCP.

    Args:
      max_frame: the largest payload a new connection's ``receive`` accepts (each connection's
        ``max_frame`` may then be changed); a longer length prefix raises
        ``DecodeError("too_large")`` before the body is read.
      frame_timeout: seconds a frame's body may take to arrive once its header has
        (``math.inf``: no limit); ``DecodeError("frame_timeout")`` after that.
      receive_budget: bytes of large bodies (over 64 KiB) being received at once, shared by
        every connection (``None``: no budget).
      tls: mutual TLS on every connection accepted and opened (``None``: plaintext). The files
        are read here (:exc:`ConfigError` when they do not load) and again by
        :meth:`reload_tls`.
    """

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        frame_timeout: float = math.inf,
        receive_budget: ReceiveBudget | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        if max_frame < 0:
            raise ConfigError(f"max_frame must be >= 0, got {max_frame}")
        if not frame_timeout > 0:
            raise ConfigError(f"frame_timeout must be > 0, got {frame_timeout}")
        self.max_frame = max_frame
        self.frame_timeout = frame_timeout
        self.receive_budget = receive_budget
        self.tls = tls
        self._contexts = tls.contexts() if tls is not None else None

    def reload_tls(self) -> None:
        """Read the TLS files again: new connections use them, open ones keep theirs.

        Raises:
          ConfigError: TLS is off, or the files do not load (the ones in use stay in force).
        """
        if self.tls is None:
            raise ConfigError("TLS is not enabled on this transport")
        self._contexts = self.tls.contexts()

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
        returns. An exception escaping a handler is logged and does not stop the server. When
        the process runs out of file descriptors (EMFILE, ENFILE) accepting pauses (0.1 s, then
        longer, up to 1 s) and retries, logging one warning a minute at most; the connections
        already open are served meanwhile.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
          TransportError: the address cannot be bound (in use, unknown host, not local).
        """
        where = _parse(address)
        try:
            listeners = await trio.open_tcp_listeners(where.port, host=where.host)
        except OSError as exc:
            raise TransportError(f"cannot listen on {where}: {_describe(exc)}") from exc

        async def run_handler(stream: trio.SocketStream) -> None:
            try:
                try:
                    server = None if self._contexts is None else self._contexts[0]
                    conn = TcpConnection(stream, self, server, server_side=True)
                except OSError:
                    return  # the peer reset the connection before we looked at it
                try:
                    await handler(conn)
                except Exception:
                    _log.exception("connection handler for %s failed", conn.remote_address)
            finally:
                await trio.aclose_forcefully(stream)

        try:
            port = listeners[0].socket.getsockname()[1]
            task_status.started(str(Address(where.host, int(port))))
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(accept_loop, listener, run_handler, nursery)
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
            if _all_refused(exc):
                raise ConnectionRefused(f"cannot connect to {where}: connection refused") from exc
            raise TransportError(f"cannot connect to {where}: {_describe(exc)}") from exc
        except (ValueError, UnicodeError) as exc:  # e.g. an over-long DNS label (idna)
            raise TransportError(f"cannot connect to {where}: {exc}") from exc
        try:
            client = None if self._contexts is None else self._contexts[1]
            return TcpConnection(stream, self, client)
        except OSError as exc:
            await trio.aclose_forcefully(stream)
            raise TransportError(f"cannot connect to {where}: {_describe(exc)}") from exc


class _Listener(Protocol):
    async def accept(self) -> trio.SocketStream: ...


async def accept_loop(
    listener: _Listener,
    handler: Callable[[trio.SocketStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept connections for ever, each handled by ``handler`` in a task of ``nursery``.

    Running out of descriptors (or kernel buffers) is not an error of this listener: it backs off
    (0.1 s, doubling up to 1 s, back to 0.1 s after the next success) and logs one warning per
    ``_ACCEPT_LOG_EVERY`` seconds with the count of failures since the last one. A flood of
    tracebacks would only add to the trouble.

    Raises:
      OSError: any other accept failure.
    """
    delay = _ACCEPT_BACKOFF[0]
    logged_at = -math.inf
    failures = 0
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                raise
            failures += 1
            now = trio.current_time()
            if now - logged_at >= _ACCEPT_LOG_EVERY:
                _log.warning(
                    "cannot accept connections: %s (%d times since the last report); "
                    "open connections are still served, retrying",
                    os.strerror(exc.errno or 0).lower(),
                    failures,
                )
                logged_at, failures = now, 0
            await trio.sleep(delay)
            delay = min(delay * 2, _ACCEPT_BACKOFF[1])
            continue
        delay = _ACCEPT_BACKOFF[0]
        nursery.start_soon(handler, stream)


def _all_refused(exc: OSError) -> bool:
    """Whether every attempt behind a failed connect was refused (trio groups them)."""
    if isinstance(exc, ConnectionRefusedError):
        return True
    group = exc.__cause__
    return isinstance(group, BaseExceptionGroup) and all(
        isinstance(e, ConnectionRefusedError) for e in group.exceptions
    )
