"""NetworkLimits: what one node spends on its connections, fixed by configuration.

Pure data (no I/O): the node hands each number to the part that enforces it (the transport,
each channel, the connection table), so the memory a node uses for connections is bounded by
these settings, not by what other machines send.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

#: Frames up to this size never wait for the receive budget (all gossip is far smaller).
SMALL_FRAME = 64 * 1024

#: The file descriptors kept out of ``max_connections`` when ``RLIMIT_NOFILE`` caps it: the data
#: dir's segment files and lock, and outbound connections to peers.
FD_HEADROOM_MIN = 128


@dataclass(frozen=True, slots=True)
class NetworkLimits:
    """Per-node limits on connections, frames and subscriptions (``Node(limits=...)``).

    Every refusal is counted in :attr:`NodeStatistics.refusals` under the key given below.

    Attributes:
      max_hello_frame: the largest frame either side accepts before the ``hello`` exchange
        completes (bytes). A longer length prefix closes the connection before its body is read
        (counted as the dropped frame ``too_large``).
      max_frame: the largest frame accepted after the ``hello`` (bytes); it is also capped by the
        transport's own ``max_frame``.
      frame_timeout: seconds a frame's body may take to arrive once its 4-byte header has (and
        its receive budget is reserved); beyond it the connection is closed
        (``frame_timeout``). The ``hello`` itself must complete within the node's
        ``request_timeout`` (``hello_timeout``).
      idle_timeout: seconds after which a connection that received no frame, has no request in
        flight and no watch subscription is closed (``idle_timeout``). Members gossip several
        times a second, so links between them never idle out; clients reconnect transparently.
      max_connections: accepted connections open at once, all sources together
        (``connection_limit``). At start it is lowered, if need be, to the process's soft
        ``RLIMIT_NOFILE`` minus the descriptors already open and a headroom for data files and
        outbound connections, so accepting never runs out of descriptors.
      max_connections_per_source: accepted connections from one IP address that are not a
        member identified by its ``hello`` (clients, and connections still in the ``hello``)
        (``source_limit``). Members on one host (a loopback cluster) do not count against it.
      max_connections_per_peer: accepted connections whose ``hello`` claims the same member
        name (``peer_limit``).
      max_outbound_bytes: bytes queued for sending on one connection before senders that may
        wait do, and its reader stops taking new requests (TCP then pushes back on the client).
      max_watches_per_connection: watch subscriptions on one connection; the next one is refused
        with the error code ``too_many_watches`` (``watch_limit``).
      max_watches: watch subscriptions from all connections together (``watch_limit``).
      max_receive_buffer: bytes of frame bodies over 64 KiB being received at once, all
        connections together. A connection reserves a frame's length after its header arrived
        and waits while the budget is spent (TCP pushes back meanwhile); smaller frames never
        wait, so gossip is never starved.

    Raises:
      ConfigError: from :class:`Node`, when a limit is not positive (or a timeout not > 0).
    """

    max_hello_frame: int = 64 * 1024
    max_frame: int = 16 * 1024 * 1024
    frame_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_connections: int = 1024
    max_connections_per_source: int = 256
    max_connections_per_peer: int = 4
    max_outbound_bytes: int = 8 * 1024 * 1024
    max_watches_per_connection: int = 16
    max_watches: int = 1024
    max_receive_buffer: int = 64 * 1024 * 1024

    def validate(self) -> None:
        """Check every limit.

        Raises:
          ValueError: a count or size below 1, or a timeout that is not a number > 0.
        """
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_timeout"):
                if not (isinstance(value, (int, float)) and value > 0 and not math.isnan(value)):
                    raise ValueError(f"{f.name} must be > 0 seconds, got {value!r}")
            elif not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{f.name} must be an integer >= 1, got {value!r}")
        if self.max_hello_frame > self.max_frame:
            raise ValueError(
                f"max_hello_frame ({self.max_hello_frame}) must not exceed "
                f"max_frame ({self.max_frame})"
            )


def effective_max_connections(configured: int, soft_nofile: int | None, open_fds: int) -> int:
    """``configured``, lowered so that accepting can never exhaust the descriptor limit.

    Args:
      configured: :attr:`NetworkLimits.max_connections`.
      soft_nofile: the process's soft ``RLIMIT_NOFILE`` (``None``: unlimited or unknown).
      open_fds: descriptors open now (data files, listeners, the event loop's own).

    Returns:
      ``min(configured, soft_nofile - open_fds - headroom)`` where the headroom is the larger of
      ``FD_HEADROOM_MIN`` and an eighth of the limit, but at least 1.
    """
    if soft_nofile is None or soft_nofile <= 0:
        return configured
    headroom = max(FD_HEADROOM_MIN, soft_nofile // 8)
    return max(1, min(configured, soft_nofile - open_fds - headroom))
