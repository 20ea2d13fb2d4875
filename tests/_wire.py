"""An attacker's end of a real connection: a hello that claims whatever the test likes, over
plain TCP or TLS with a chosen certificate, then the real codec and channel."""

from __future__ import annotations

import trio

from gossipkv import RemoteError, TLSConfig
from gossipkv._messages import PROTOCOL_VERSION, Hello, Message
from gossipkv._outbox import TransportCounters
from gossipkv._peer import Channel, handshake
from gossipkv.transport import TcpTransport


async def raw_channel(
    address: str,
    tls: TLSConfig | None,
    name: str,
    nursery: trio.Nursery,
    *,
    cluster: str = "gossipkv",
    generation: int = 1,
) -> Channel:
    """A connection to ``address`` whose hello claims ``name``, run in ``nursery``."""
    conn = await TcpTransport(tls=tls).connect(address)
    counters = TransportCounters()
    try:
        remote = await handshake(
            conn,
            Hello(PROTOCOL_VERSION, cluster, name, generation, "127.0.0.1:1"),
            initiator=True,
            max_frame=64 * 1024,
            counters=counters,
            own_node_id=None,
        )
    except BaseException:
        await conn.aclose()
        raise
    channel = Channel(
        conn, remote, on_request=_no_requests, on_oneway=_no_oneway, max_frame=1 << 20,
        counters=counters,
    )  # fmt: skip
    await nursery.start(channel.run)
    return channel


async def _no_requests(channel: Channel, message: Message) -> Message:
    raise RemoteError("unsupported", "no")


async def _no_oneway(channel: Channel, message: Message) -> None:
    return
