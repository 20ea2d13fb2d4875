"""A bare Trio + CBOR echo server and client: the Python ceiling a gossipkv peer is measured against.

It speaks gossipkv's framing (4-byte big-endian length prefix, then one CBOR array
``[kind, request_id, tag, [value]]``) and does the least a request/response server can do: decode
each request frame and answer with a response frame of the same size (the same array with
``kind`` 1). Many requests may be in flight on one client connection, as with
:func:`gossipkv.open_client`. ``gossip bench kv --baseline-echo`` runs it in its own process (its
own core, like a real peer) with :func:`open_echo_server_process`.

Run it alone with ``python -m gossipkv.testing._echo --listen 127.0.0.1:0``; it prints
``echo serving on HOST:PORT`` once it listens.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .._codec import FRAME_HEADER, dumps_canonical, frame_header, frame_length, loads_value
from .._errors import ConnectionClosed, DecodeError, TransportError
from .._types import Address

_CHUNK = 64 * 1024
_REQUEST = 0
_RESPONSE = 1
_TAG = "echo"
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class _FramedStream:
    """Length-prefixed payloads over one Trio stream (one reader, writes under a lock)."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    async def send(self, payload: bytes) -> None:
        async with self._send_lock:
            try:
                await self._stream.send_all(frame_header(payload) + payload)
            except _STREAM_ERRORS as exc:
                raise ConnectionClosed(f"echo connection closed: {exc}") from exc

    async def receive(self) -> bytes | None:
        """The next payload, or None at a clean end of stream."""
        header = await self._read(FRAME_HEADER)
        if header is None:
            return None
        body = await self._read(frame_length(header))
        if body is None:
            raise DecodeError("truncated", "echo connection ended inside a frame")
        return body

    async def _read(self, count: int) -> bytes | None:
        while len(self._buffer) < count:
            try:
                chunk = await self._stream.receive_some(_CHUNK)
            except _STREAM_ERRORS as exc:
                raise ConnectionClosed(f"echo connection closed: {exc}") from exc
            if not chunk:
                return None
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    async def aclose(self) -> None:
        await self._stream.aclose()


def _parse_frame(payload: bytes) -> tuple[int, int, object]:
    match loads_value(payload):
        case [int(kind), int(request_id), str(tag), [value]] if tag == _TAG:
            return kind, request_id, value
        case _:
            raise DecodeError("bad_shape", "echo frame is not [kind, id, 'echo', [value]]")


async def _serve_connection(stream: trio.SocketStream) -> None:
    framed = _FramedStream(stream)
    try:
        while True:
            payload = await framed.receive()
            if payload is None:
                return
            kind, request_id, value = _parse_frame(payload)
            if kind != _REQUEST:
                return
            await framed.send(dumps_canonical([_RESPONSE, request_id, _TAG, [value]]))
    except (ConnectionClosed, DecodeError):
        return


async def serve_echo(
    listen: str = "127.0.0.1:0", *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve echo on ``listen`` (port 0 picks one) until cancelled; reports ``"host:port"``.

    ``address = await nursery.start(serve_echo, "127.0.0.1:0")``

    Args:
      listen: ``host:port`` to bind.

    Raises:
      TransportError: the address cannot be bound.
      ValueError: ``listen`` is not ``host:port``.
    """
    where = Address.parse(listen)
    try:
        listeners = await trio.open_tcp_listeners(where.port, host=where.host)
    except OSError as exc:
        raise TransportError(f"cannot listen on {where}: {exc}") from exc
    port = listeners[0].socket.getsockname()[1]
    task_status.started(str(Address(where.host, int(port))))
    await trio.serve_listeners(_serve_connection, listeners)


class EchoClient:
    """Many concurrent ``echo`` calls over one connection (create with :func:`open_echo_client`).

    The baseline ``gossipkv bench kv --baseline-echo`` drives in place of a peer.
    """

    def __init__(self, framed: _FramedStream) -> None:
        self._framed = framed
        self._ids = itertools.count(1)
        self._waiters: dict[int, trio.Event] = {}
        self._closed = False

    async def echo(self, value: object) -> None:
        """Send ``value`` in a request frame and wait for the same-sized response frame.

        Args:
          value: any CBOR-encodable value.

        Raises:
          ConnectionClosed: the connection closed before the response came.
        """
        request_id = next(self._ids)
        event = trio.Event()
        self._waiters[request_id] = event
        try:
            await self._framed.send(dumps_canonical([_REQUEST, request_id, _TAG, [value]]))
            await event.wait()
        finally:
            self._waiters.pop(request_id, None)
        if self._closed:
            raise ConnectionClosed("echo connection closed")

    async def _read_loop(self) -> None:
        try:
            while True:
                payload = await self._framed.receive()
                if payload is None:
                    return
                _, request_id, _ = _parse_frame(payload)
                event = self._waiters.get(request_id)
                if event is not None:
                    event.set()
        except (ConnectionClosed, DecodeError):
            return
        finally:
            self._closed = True
            for event in self._waiters.values():
                event.set()


@asynccontextmanager
async def open_echo_client(address: str) -> AsyncIterator[EchoClient]:
    """Connect to an echo server at ``"host:port"``.

    Args:
      address: the server's ``host:port``.

    Yields:
      An :class:`EchoClient`; the connection is closed on exit.

    Raises:
      TransportError: the server cannot be reached.
      ValueError: ``address`` is not ``host:port``.
    """
    where = Address.parse(address)
    try:
        stream = await trio.open_tcp_stream(where.host, where.port)
    except OSError as exc:
        raise TransportError(f"cannot connect to echo server {where}: {exc}") from exc
    framed = _FramedStream(stream)
    client = EchoClient(framed)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client._read_loop)
        try:
            yield client
        finally:
            with trio.CancelScope(shield=True):
                await framed.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_echo_server_process(host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Run an echo server in a child Python process on ``host``; yields its ``"host:port"``.

    The child is killed on exit.

    Args:
      host: the interface the child binds (on a free port).

    Yields:
      The child's ``"host:port"``.

    Raises:
      TransportError: the child did not report a listening address within 30 seconds.
    """
    code = "import sys; from gossipkv.testing._echo import main; sys.exit(main())"
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-c", code, "--listen", f"{host}:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = b""
        with trio.move_on_after(30.0):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(1)
                if not chunk:
                    break
                line += chunk
        text = line.decode(errors="replace").strip()
        prefix = "echo serving on "
        if not text.startswith(prefix):
            raise TransportError(f"echo server did not start (said {text!r})")
        yield text[len(prefix) :]
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gossipkv.testing._echo", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0 picks one)")
    args = parser.parse_args(argv)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve_echo, args.listen)
            print(f"echo serving on {address}", flush=True)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        pass
    except (TransportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
