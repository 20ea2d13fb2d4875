"""Raw attack clients: TCP sockets that speak just enough of the wire to be hostile.

A frame is a 4-byte big-endian length and one CBOR item ``[kind, request_id, tag, fields]``; the
first frame is a ``hello``. These helpers build frames with the real codec where the message is
well formed (``gossipkv._codec.encode``) and with cbor2 directly where it is not, and open
connections from a chosen loopback source address (``127.0.0.2`` by default, so per-source limits
hit the attacker and not the well-behaved clients and peers on ``127.0.0.1``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import cbor2
import trio

from gossipkv import _codec
from gossipkv._messages import PROTOCOL_VERSION, Hello, Kind, Message
from gossipkv.storage import _log_format

ATTACK_SOURCE = "127.0.0.2"

HELLO = Hello(
    proto=PROTOCOL_VERSION, cluster="gossipkv", node_id="client", generation=0, address=""
)


def frame(payload: bytes) -> bytes:
    """A length-prefixed frame around ``payload`` (any bytes)."""
    return len(payload).to_bytes(4, "big") + payload


def message_frame(message: Message, *, kind: Kind = Kind.REQUEST, request_id: int = 1) -> bytes:
    """A well-formed frame of ``message``, encoded by the real codec."""
    return frame(_codec.encode(kind, request_id, message))


def hello_frame() -> bytes:
    return message_frame(HELLO, kind=Kind.ONEWAY, request_id=0)


def raw_frame(kind: int, request_id: int, tag: Any, fields: Any) -> bytes:
    """A frame of any envelope, bypassing the codec's schema (for malformed messages)."""
    return frame(cbor2.dumps([kind, request_id, tag, fields]))


def empty_arrays_payload(size: int) -> bytes:
    """One CBOR array of ``size - 5`` empty arrays: ``size`` bytes that decode into ~60x more."""
    count = size - 5
    return b"\x9a" + count.to_bytes(4, "big") + b"\x80" * count


def nested(depth: int, leaf: object = 0) -> object:
    """A list nested ``depth`` deep around ``leaf`` (``nested(1) == [0]``)."""
    value: object = leaf
    for _ in range(depth):
        value = [value]
    return value


def context_pairs(context: bytes) -> list[tuple[str, int]]:
    """The ``(actor, counter)`` pairs of a context returned by a real read."""
    return [(str(a), int(n)) for a, n in cbor2.loads(context)]


def forged_context(pairs: Iterable[tuple[str, int]]) -> bytes:
    """A context as a gossipkv read returns it: canonical CBOR of sorted ``[actor, counter]``."""
    return cbor2.dumps([[a, n] for a, n in sorted(pairs)], canonical=True)


class RawConnection:
    """One attacker connection: send bytes, optionally read frames back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self.closed = False

    @classmethod
    async def open(cls, addr: str, *, source: str = ATTACK_SOURCE) -> RawConnection:
        host, port = addr.rsplit(":", 1)
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            await sock.bind((source, 0))
            await sock.connect((host, int(port)))
        except BaseException:
            sock.close()
            raise
        return cls(trio.SocketStream(sock))

    async def send(self, data: bytes) -> bool:
        """Send ``data``; False if the peer closed the connection meanwhile."""
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self.closed = True
            return False
        return True

    async def read_frame(self) -> tuple[int, int, str, Any] | None:
        """The next ``[kind, request_id, tag, fields]`` received, or None at end of stream."""
        while True:
            if len(self._buffer) >= 4:
                length = int.from_bytes(self._buffer[:4], "big")
                if len(self._buffer) >= 4 + length:
                    payload = bytes(self._buffer[4 : 4 + length])
                    del self._buffer[: 4 + length]
                    kind, rid, tag, fields = cbor2.loads(payload)
                    return kind, rid, tag, fields
            try:
                chunk = await self.stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                self.closed = True
                return None
            self._buffer += chunk

    async def hello(self) -> tuple[int, int, str, Any] | None:
        """Send a client hello and read the peer's answer (its hello, or a refusal)."""
        if not await self.send(hello_frame()):
            return None
        return await self.read_frame()

    async def at_eof(self) -> bool:
        """Wait until the peer closes the connection (discarding what it sends); True then."""
        while True:
            try:
                chunk = await self.stream.receive_some(1 << 20)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                chunk = b""
            if not chunk:
                self.closed = True
                return True

    async def aclose(self) -> None:
        self.closed = True
        with trio.move_on_after(1.0, shield=True):
            await self.stream.aclose()


async def raw_request(addr: str, data: bytes, *, within: float = 10.0) -> tuple[Any, ...] | None:
    """Send ``data`` (one request frame) after a hello on a fresh attacker connection; the first
    frame answered, or None if the peer closed the connection (or did not answer in time)."""
    conn = await RawConnection.open(addr)
    try:
        with trio.move_on_after(within):
            if (await conn.hello()) is None or not await conn.send(data):
                return None
            return await conn.read_frame()
        return None
    finally:
        await conn.aclose()


@asynccontextmanager
async def raw_connections(
    addr: str, count: int, *, hello: bool, source: str = ATTACK_SOURCE
) -> AsyncIterator[list[RawConnection]]:
    """``count`` attacker connections to ``addr`` (each handshaken if ``hello``), closed at exit.

    A connection the peer refuses or closes is kept in the list with ``closed`` set.
    """
    async with AsyncExitStack() as stack:
        conns: list[RawConnection] = []
        for _ in range(count):
            try:
                conn = await RawConnection.open(addr, source=source)
            except OSError:
                continue
            stack.push_async_callback(conn.aclose)
            conns.append(conn)
            if hello:
                with trio.move_on_after(5.0):
                    reply = await conn.hello()
                    if reply is None or reply[2] != "hello":
                        conn.closed = True
        yield conns


# --- damage on disk -----------------------------------------------------------------------------

#: The separator of hinted-handoff keys in a peer's ``hints/`` engine: ``owner + SEP + key``.
HINT_SEP = "\x1f"

#: Stored values that are valid, checksummed log records but not a readable clock.
UNREADABLE_CLOCKS: dict[str, bytes] = {
    "not_a_clock": cbor2.dumps(["not", "a", "clock"]),
    "too_deep": cbor2.dumps(nested(70)),
    "dot_over_2_64": cbor2.dumps([[["p0/forged/0", 2**64, [[b"x", False, {}]]]], []]),
    "invalid_cbor": b"\xff\xfe\xfd",
}


def plant_records(engine_dir: Path, records: dict[str, bytes]) -> Path:
    """Write ``records`` (key -> stored bytes) into a stopped peer's log engine directory as a new
    segment whose sequence numbers are above every existing record's: each becomes the newest
    record of its key, with a valid checksum. Returns the new segment's path."""
    segs = sorted(p for p in engine_dir.glob("*.seg"))
    max_seq = 0
    for seg in segs:
        entries = _log_format.scan_segment(seg.read_bytes()).entries
        max_seq = max([max_seq, *entries.seqs])
    number = max([0, *(int(p.stem) for p in segs)]) + 1
    body = b"".join(
        _log_format.encode_record(max_seq + 1 + i, key.encode("utf-8"), value)
        for i, (key, value) in enumerate(records.items())
    )
    path = engine_dir / f"{number:08d}.seg"
    path.write_bytes(body)
    return path
