"""The client of a cluster, :class:`Client`, and :func:`open_client`, which runs one.

``Client`` is a facade over rooms of one concept each: :class:`~._connection.FailoverConnection`
(the peer in use and the failover to the next, with the in-flight requests timed by
``_expiry``), and its calls in three bases: reads, writes and the views anyone may ask for
(``_data_calls``), the operator's toolbox (``_toolbox_calls``) and the streams, watch and
monitor (``_streams``). Replies are read by ``_replies``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from .._errors import ConfigError, single_error
from .._types import Address
from ..transport._base import Transport
from ..transport._tls import TLSConfig
from ._connection import FailoverConnection
from ._data_calls import DataCalls
from ._streams import StreamCalls
from ._toolbox_calls import ToolboxCalls


class Client(DataCalls, ToolboxCalls, StreamCalls):
    """Talks to a cluster through one peer at a time. Create it with :func:`open_client`.

    Many requests may be in flight at once on the one connection. When a request finds the
    connected peer gone (or silent for ``request_timeout``), the client moves to the next listed
    peer; requests that are safe to repeat (reads, members, statistics, and puts, which carry an
    idempotency id) are retried there (at least once, even with one peer listed), operator
    requests are not. A connection the peer closed while it was idle (its
    ``NetworkLimits.idle_timeout``) is simply reopened by the next request, of any kind.

    Attributes:
      connected_to: the address of the peer in use, or ``None`` before the first request.
      watch_dropped: changes a slow :meth:`watch` reader lost (its buffer was full).
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
        self._connection = FailoverConnection(
            peers,
            cluster=cluster,
            transport=transport,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            nursery=nursery,
        )
        #: Changes a slow :meth:`watch` reader lost (its buffer was full: the newest are dropped).
        self.watch_dropped = 0

    @property
    def connected_to(self) -> str | None:
        """The address of the peer in use, or ``None`` before the first request."""
        return self._connection.connected_to

    async def aclose(self) -> None:
        """Close the connection; later requests raise :exc:`NodeClosedError`. Idempotent.

        :func:`open_client` calls it on exit.
        """
        await self._connection.aclose()


@asynccontextmanager
async def open_client(
    peers: Sequence[str],
    *,
    cluster: str = "gossipkv",
    transport: Transport | None = None,
    connect_timeout: float = 2.0,
    request_timeout: float = 5.0,
    tls: TLSConfig | None = None,
) -> AsyncIterator[Client]:
    """Open a :class:`Client` of the cluster reachable through ``peers``.

    ``async with open_client(["127.0.0.1:7400"]) as client: await client.get("k")``

    The client connects on its first request, to the first address of ``peers`` that answers,
    and moves to the next one when that peer goes away.

    Args:
      peers: ``host:port`` addresses of members, tried in order.
      cluster: the cluster name; a peer of another cluster refuses the connection.
      transport: defaults to TCP; tests pass a ``gossipkv.testing.SimNetwork`` transport.
      connect_timeout: seconds one connection attempt may take.
      request_timeout: seconds one request may take before the client tries the next peer.
      tls: mutual TLS (:class:`TLSConfig`, e.g. ``TLSConfig.from_dir(d, "alice")``) for peers
        run with ``--tls-dir``; each peer's certificate must carry the ``peer`` role and the
        name it gives in its hello. A ``client`` certificate may read, write, watch and read
        statistics; leave, remove, repair and metadata need an ``operator`` one.

    Yields:
      The :class:`Client`; it is closed on exit.

    Raises:
      ConfigError: at call time, for an empty or malformed peer list.

    The requests themselves raise :exc:`HandshakeError` (another cluster or protocol version)
    and :exc:`TransportError` (no listed peer reachable); see :class:`Client`.
    """
    if isinstance(peers, str) or not peers:
        raise ConfigError("peers must be a non-empty list of 'host:port' strings")
    try:
        for p in peers:
            Address.parse(p)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if transport is None:
        from ..transport._tcp import TcpTransport

        transport = TcpTransport(tls=tls)
    elif tls is not None:
        raise ConfigError("pass tls to the transport you give, not to open_client")
    try:
        async with trio.open_nursery() as nursery:
            client = Client(
                peers,
                cluster=cluster,
                transport=transport,
                connect_timeout=connect_timeout,
                request_timeout=request_timeout,
                nursery=nursery,
            )
            try:
                yield client
            finally:
                with trio.move_on_after(1.0, shield=True):
                    await client.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        error = single_error(group)
        if error is None:
            raise
        raise error from group
