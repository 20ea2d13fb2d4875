"""The connection pool: one channel per peer address, dialled on demand and reused both ways.

A peer dials a member the first time it has something to send there and keeps that channel;
an inbound connection from a member serves this peer's own requests to it too (Single Socket
Channel). Requests for a member go only over a channel whose hello (with TLS, whose
certificate) names that member. Inbound connections are admitted against the connection caps,
shaken hands with under a small frame limit, and served by the request router.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Protocol

import trio

from ._connections import Admission, ConnectionTable
from ._errors import (
    ConnectionClosed,
    DecodeError,
    HandshakeError,
    RemoteError,
    TransportError,
    Unavailable,
    error_from_code,
)
from ._hlc import HybridClock
from ._limits import NetworkLimits
from ._messages import Hello, Message
from ._outbox import TransportCounters
from ._peer import Channel, handshake, verify_certificate
from ._router import Router
from .membership._gossiper import Gossiper
from .transport._base import Connection, Transport

log = logging.getLogger("gossipkv.node")

#: How many request timeouts a joining peer waits for one handshake with a seed (see
#: :meth:`ConnectionPool.handshake`).
JOIN_PATIENCE = 5


class RateLimit(Protocol):
    """Whether a log line keyed ``key`` may be written now (see ``LogLimiter``)."""

    def allow(self, key: object, now: float) -> bool: ...


class ConnectionPool:
    """One node's connections to its peers and from its clients.

    Args:
      transport: where connections come from.
      limits: frame sizes, outbound queue and idle timeout per channel.
      conns: the connection caps (admission of inbound connections).
      counters: transport counters (shared with every channel).
      refusals: the node's refusal counts (``wrong_member``, ``hello_timeout``).
      hlc: the node's hybrid clock (hellos carry it both ways).
      router: answers what arrives on every channel.
      tls: whether connections carry certificates (identity and role come from them).
      hello: this peer's hello, made fresh for each handshake.
      own_name: this peer's name (a hello claiming it is refused).
      joining: whether this peer is still joining (its dials wait longer for a busy seed).
      gossiper: the membership core (member addresses).
      nursery: where outbound channels run.
      ready: set once the node can serve (inbound connections wait for it).
      log_limit: rate limit of the warnings about refused connections.
      request_timeout, connect_timeout: seconds.
    """

    def __init__(
        self,
        *,
        transport: Transport,
        limits: NetworkLimits,
        conns: ConnectionTable,
        counters: TransportCounters,
        refusals: Counter[str],
        hlc: HybridClock,
        router: Router,
        tls: bool,
        hello: Callable[[], Hello],
        own_name: Callable[[], str],
        joining: Callable[[], bool],
        gossiper: Callable[[], Gossiper],
        nursery: Callable[[], trio.Nursery],
        ready: trio.Event,
        log_limit: RateLimit,
        request_timeout: float,
        connect_timeout: float,
        on_lost: Callable[[str], None] = lambda node_id: None,
    ) -> None:
        self._transport = transport
        self._limits = limits
        self._conns = conns
        self._counters = counters
        self._refusals = refusals
        self._hlc = hlc
        self._router = router
        self._tls = tls
        self._hello = hello
        self._own_name = own_name
        self._joining = joining
        self._gossiper = gossiper
        self._nursery = nursery
        self._ready = ready
        self._log_limit = log_limit
        self._request_timeout = request_timeout
        self._connect_timeout = connect_timeout
        self._on_lost = on_lost
        #: address -> the channel to whoever answers there (outbound, or a member's inbound).
        self.channels: dict[str, Channel] = {}
        # member -> (the address it announced, the channel to it): the data path's fast lookup.
        self._by_member: dict[str, tuple[object, Channel]] = {}
        self._connect_locks: dict[str, trio.Lock] = {}

    async def send_to_member(self, member: str, message: Message) -> Message:
        addr = self._gossiper().address_of(member)
        if addr is None:
            raise Unavailable(f"no address known for {member}")
        channel = await self.channel_to(addr)
        self.check_member(channel, member)
        try:
            return await channel.request(message)
        except RemoteError as exc:
            raise error_from_code(exc.code, str(exc)) from exc

    def check_member(self, channel: Channel, member: str) -> None:
        """Refuse to send ``member``'s requests to whoever answers at its address under another
        name (with TLS, the name its certificate proves): gossip that moved a member's address
        must not divert its replicas' traffic."""
        if channel.remote.node_id != member:
            self._refusals["wrong_member"] += 1
            raise Unavailable(
                f"{channel.remote.node_id!r} answers at the address of {member}; not sending"
            )

    def start_to_member(
        self, member: str, message: Message, callback: Callable[[Message | BaseException], None]
    ) -> Callable[[], None] | None:
        """Start a request over an open channel to ``member`` without waiting (data path)."""
        gossiper = self._gossiper()
        announced = gossiper.announced_address(member)
        cached = self._by_member.get(member)
        if cached is not None and cached[0] == announced and not cached[1].closed:
            channel = cached[1]
        else:
            addr = gossiper.address_of(member)
            found = None if addr is None else self.channels.get(addr)
            if found is None or found.closed:
                self._by_member.pop(member, None)
                return None
            if found.remote.node_id != member:
                return None  # the waiting fallback refuses (and counts) it
            channel = found
            self._by_member[member] = (announced, channel)

        def on_reply(reply: Message | BaseException) -> None:
            if isinstance(reply, RemoteError):
                reply = error_from_code(reply.code, str(reply))
            callback(reply)

        try:
            request_id = channel.request_nowait(message, on_reply)
        except (ConnectionClosed, trio.WouldBlock):
            return None  # the caller falls back to a task that waits for room (or times out)
        return partial(channel.cancel, request_id)

    def connected(self, addr: str) -> bool:
        """Whether an open channel with ``addr`` exists (asking it costs no new connection)."""
        channel = self.channels.get(addr)
        return channel is not None and not channel.closed

    async def channel_to(self, addr: str) -> Channel:
        existing = self.channels.get(addr)
        if existing is not None and not existing.closed:
            return existing
        lock = self._connect_locks.setdefault(addr, trio.Lock())
        try:
            return await self._connect_locked(addr, lock)
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._connect_locks.pop(addr, None)

    async def _connect_locked(self, addr: str, lock: trio.Lock) -> Channel:
        async with lock:
            existing = self.channels.get(addr)
            if existing is not None and not existing.closed:
                return existing
            with trio.move_on_after(self._connect_timeout) as scope:
                conn = await self._transport.connect(addr)
            if scope.cancelled_caught:
                raise TransportError(f"connect to {addr} timed out")
            try:
                remote = await self.handshake(conn, initiator=True)
            except BaseException as exc:
                with trio.move_on_after(0.5, shield=True):
                    await conn.aclose()
                if isinstance(exc, trio.TooSlowError):
                    # A peer that accepts but does not answer (stopped, overloaded) is one we
                    # cannot reach: the data path's callers handle that, not a bare timeout.
                    raise TransportError(f"{addr} did not complete the handshake in time") from None
                raise
            channel = self._make_channel(conn, remote)
            self.channels[addr] = channel
            await self._nursery().start(self._run_channel, channel, addr)
            return channel

    async def handshake(
        self,
        conn: Connection,
        *,
        initiator: bool,
        admit: Callable[[Hello], bool] | None = None,
    ) -> Hello:
        # Only small frames until the hello is done, both ways: a stranger's first frame cannot
        # make this node read (or decode) megabytes.
        conn.max_frame = min(conn.max_frame, self._limits.max_hello_frame)
        timeout = self._request_timeout
        if initiator and self._joining():
            # A joiner's connection to a busy seed waits in the seed's accept queue: cutting it
            # off after request_timeout and dialling again only queues another one behind it,
            # until every hello arrives after its sender gave up (what stalled issue 15's joins).
            timeout *= JOIN_PATIENCE
        with trio.fail_after(timeout):
            hello = await handshake(
                conn,
                self._hello(),
                initiator=initiator,
                max_frame=conn.max_frame,
                counters=self._counters,
                own_node_id=self._own_name(),
                admit=admit,
                verify=partial(verify_certificate, conn, initiator) if self._tls else None,
            )
        conn.max_frame = self.max_frame()
        return hello

    def max_frame(self) -> int:
        return min(self._transport.max_frame, self._limits.max_frame)

    async def _run_channel(
        self,
        channel: Channel,
        addr: str,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        # The status object knows the task that dialled (a probe, say): held in this frame for
        # the channel's whole life, it would keep that finished task and its nursery alive.
        status = [task_status]
        del task_status
        try:
            with self._conns.channel(member=True):
                await channel.run(task_status=status.pop())
        finally:
            if self.channels.get(addr) is channel:
                del self.channels[addr]
            self._lost(channel)

    def _lost(self, channel: Channel) -> None:
        if channel.remote.node_id != "client":
            self._on_lost(channel.remote.node_id)

    def _make_channel(self, conn: Connection, remote: Hello) -> Channel:
        identity = conn.tls_identity if self._tls else None
        if remote.hlc:
            self._hlc.update(remote.hlc)
        return Channel(
            conn,
            remote,
            on_request=self._router.request,
            on_oneway=self._router.oneway,
            on_request_nowait=self._router.request_nowait,
            max_frame=self.max_frame(),
            counters=self._counters,
            max_outbound_bytes=self._limits.max_outbound_bytes,
            idle_timeout=self._limits.idle_timeout,
            refuse=self._router.refusal(remote.node_id, identity.role if identity else None),
        )

    async def handle_connection(self, conn: Connection) -> None:
        admission = self._conns.accept(conn.remote_address)
        if admission is None:
            return  # over a cap: closed before anything is read (counted)
        try:
            await self._serve_connection(conn, admission)
        finally:
            self._conns.release(admission)

    async def _serve_connection(self, conn: Connection, admission: Admission) -> None:
        await self._ready.wait()

        def admit(hello: Hello) -> bool:
            # Before our hello goes back: a member name over its cap gets no answer.
            known = hello.node_id != "client" and (
                self._gossiper().address_of(hello.node_id) is not None
            )
            return self._conns.identify(admission, hello.node_id, known_member=known)

        try:
            remote = await self.handshake(conn, initiator=False, admit=admit)
        except HandshakeError as exc:
            host = conn.remote_address.rsplit(":", 1)[0]
            if self._log_limit.allow(("refused", host, exc.reason), trio.current_time()):
                log.warning("refused connection from %s: %s", conn.remote_address, exc)
            return
        except DecodeError as exc:
            self._counters.count_decode_error(exc)
            return
        except trio.TooSlowError:
            self._refusals["hello_timeout"] += 1
            return
        except (ConnectionClosed, TransportError):
            self._counters.dropped["handshake_failed"] += 1
            return
        member = remote.node_id != "client"
        channel = self._make_channel(conn, remote)
        addr = remote.address if member else ""
        if addr and addr not in self.channels:
            # Reuse the inbound connection for our own requests to this peer (Single Socket Channel).
            self.channels[addr] = channel
        try:
            with self._conns.channel(member=member):
                await channel.run()
        finally:
            if addr and self.channels.get(addr) is channel:
                del self.channels[addr]
            if member:
                self._lost(channel)
