"""The client's way into a cluster: one connection at a time to one of the listed peers, moved to
the next peer when that one goes away or stays silent, with the retry rules that keep a request
from running twice where that would matter (only requests safe to repeat are retried).

Many requests share the one connection; only connecting is serialized. Each request is timed by
the :class:`~._expiry.RequestExpiry` queue. Watches and monitors open connections of their own
through :meth:`FailoverConnection.dial`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import partial

import trio

from .._errors import (
    ConnectionClosed,
    DecodeError,
    GossipKVError,
    HandshakeError,
    NodeClosedError,
    RemoteError,
    TransportError,
    error_from_code,
)
from .._limits import NetworkLimits
from .._messages import PROTOCOL_VERSION, Hello, Message
from .._outbox import TransportCounters
from .._peer import Channel, OnewayHandler, handshake, verify_certificate
from ..transport._base import Transport
from ._expiry import NotSent, RequestExpiry
from ._replies import reply_body

#: Error codes after which a retry-safe request is tried on the next peer: the peer could not
#: reach enough replicas, which another peer (on the other side of a cut) may.
_TRY_ELSEWHERE = frozenset({"quorum", "unavailable", "not_ready"})
_HELLO_FRAME = NetworkLimits().max_hello_frame


class FailoverConnection:
    """The connection to the peer in use, and the failover to the next listed one.

    Attributes:
      connected_to: the address of the peer in use, or ``None`` before the first request.
      request_timeout: seconds one request may take before the next peer is tried.
      client_id: this client's id; with :meth:`next_seq` it makes each write's idempotency id,
        so a retried write returns the first result instead of writing a second sibling.
    """

    def __init__(
        self,
        peers: Sequence[str],
        *,
        cluster: str,
        transport: Transport,
        connect_timeout: float,
        request_timeout: float,
        nursery: trio.Nursery,
    ) -> None:
        self._peers = list(peers)
        self._cluster = cluster
        self._transport = transport
        self._connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self._nursery = nursery
        self._channel: Channel | None = None
        self._counters = TransportCounters()
        self._tls = getattr(transport, "tls", None) is not None
        self._lock = trio.Lock()
        self._expiry = RequestExpiry(request_timeout)
        nursery.start_soon(self._expiry.run)
        self._closed = False
        self.connected_to: str | None = None
        self.client_id = secrets.token_hex(8)
        self._seq = 0

    @property
    def closed(self) -> bool:
        """Whether :meth:`aclose` was called."""
        return self._closed

    def next_seq(self) -> int:
        """The sequence number of this client's next write."""
        self._seq += 1
        return self._seq

    async def connect(self) -> Channel:
        """The open connection, or a new one to the first listed peer that answers.

        Raises:
          NodeClosedError: the client is closed.
          HandshakeError: a peer is in another cluster or speaks another protocol version.
          TransportError: no listed peer answered.
        """
        if self._closed:
            raise NodeClosedError("client is closed")
        if self._channel is not None and not self._channel.closed:
            return self._channel
        errors: list[str] = []
        for addr in self._peers:
            try:
                channel = await self.dial(addr, ignore_oneway, self._nursery)
            except HandshakeError:
                raise
            except (TransportError, DecodeError, trio.TooSlowError) as exc:
                errors.append(f"{addr}: {exc or 'no answer'}")
                continue
            self._channel = channel
            self.connected_to = addr
            return channel
        raise TransportError("no peer reachable: " + "; ".join(errors))

    async def request(self, message: Message, *, retry: bool) -> dict[str, object]:
        """:meth:`call`, for requests answered by a :class:`Reply`: its body."""
        return reply_body(await self.call(message, retry=retry))

    async def call(self, message: Message, *, retry: bool) -> Message:
        """Send ``message`` to the peer in use and return its answer; with ``retry`` (a request
        safe to repeat) try the next peers when that one does not answer or cannot reach
        enough replicas.

        Raises:
          TransportError: no peer answered (the last one's failure).
          GossipKVError: the peer's refusal, rebuilt from its code.
          HandshakeError, NodeClosedError: as :meth:`connect`.
        """
        # Many requests may be in flight on the one connection; only connecting is serialized.
        # A request safe to repeat gets one attempt per listed peer, and at least two: a peer
        # closes connections that stay idle (NetworkLimits.idle_timeout), and a request that
        # met such a close must work on a fresh connection even with a single peer listed.
        attempts = max(2, len(self._peers)) if retry else 1
        last: GossipKVError | None = None
        unsent = 0
        while attempts > 0:
            channel = self._channel
            if channel is None or channel.closed or self._closed:
                async with self._lock:
                    channel = await self.connect()
            peer = self.connected_to
            try:
                reply = await self._expiry.request(channel, message)
            except NotSent:
                # The connection had closed before the request went out (an idle connection
                # the peer closed): nothing was sent, so any request may go again.
                await self._drop(channel, peer, rotate=False)
                unsent += 1
                if unsent > len(self._peers) + 1:
                    raise TransportError(f"{peer}: connection closed") from None
                continue
            except (ConnectionClosed, trio.TooSlowError) as exc:
                last = TransportError(f"{peer}: {exc or 'request timed out'}")
                await self._drop(channel, peer, rotate=True)
                attempts -= 1
                continue
            except RemoteError as exc:
                error = error_from_code(exc.code, str(exc))
                if not (retry and exc.code in _TRY_ELSEWHERE):
                    raise error from exc
                # This peer cannot see enough replicas (cut off, or its owners are down): another
                # one may. Safe to repeat: reads, and puts (they carry an idempotency id).
                last = error
                await self._drop(channel, peer, rotate=True)
                attempts -= 1
                if attempts <= 0 or len(self._peers) < 2:
                    raise error from exc
                continue
            return reply
        assert last is not None
        raise last

    async def _drop(self, channel: Channel, peer: str | None, *, rotate: bool) -> None:
        """Close the connection to ``peer``; with ``rotate`` try the next listed peer first."""
        async with self._lock:
            if self._channel is channel:
                await channel.aclose()
                self._channel = None
                # Try the next peer first next time.
                if rotate and peer in self._peers:
                    self._peers.remove(peer)
                    self._peers.append(peer)

    async def dial(self, addr: str, on_oneway: OnewayHandler, nursery: trio.Nursery) -> Channel:
        """A new connection to ``addr`` (handshake done, running in ``nursery``).

        Raises:
          TransportError, HandshakeError, DecodeError, trio.TooSlowError.
        """
        with trio.move_on_after(self._connect_timeout) as scope:
            conn = await self._transport.connect(addr)
        if scope.cancelled_caught:
            raise TransportError("connect timed out")
        # Only small frames until the peer's hello has come (as a peer does).
        conn.max_frame = min(conn.max_frame, _HELLO_FRAME)
        try:
            with trio.fail_after(self.request_timeout):
                remote = await handshake(
                    conn,
                    Hello(PROTOCOL_VERSION, self._cluster, "client", 0, ""),
                    initiator=True,
                    max_frame=conn.max_frame,
                    counters=self._counters,
                    own_node_id=None,
                    # With TLS, the peer's certificate must be a member's and name it.
                    verify=partial(verify_certificate, conn, True) if self._tls else None,
                )
            conn.max_frame = self._transport.max_frame
        except BaseException:
            with trio.move_on_after(0.5, shield=True):
                await conn.aclose()
            raise
        channel = Channel(
            conn,
            remote,
            on_request=_refuse_requests,
            on_oneway=on_oneway,
            max_frame=self._transport.max_frame,
            counters=self._counters,
        )
        await nursery.start(channel.run)
        return channel

    async def aclose(self) -> None:
        """Close the connection; later requests raise :exc:`NodeClosedError`. Idempotent."""
        self._closed = True
        if self._channel is not None:
            await self._channel.aclose()


async def _refuse_requests(channel: Channel, message: Message) -> Message:
    raise RemoteError("unsupported", "clients do not serve requests")


async def ignore_oneway(channel: Channel, message: Message) -> None:
    """The one-way handler of a connection that expects no one-way messages."""
    return
