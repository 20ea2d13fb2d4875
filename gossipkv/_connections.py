"""The connections of one node: admission against its NetworkLimits, and what it holds open.

A :class:`ConnectionTable` decides, without I/O, whether an accepted connection may stay (the
total cap, the cap per source address, then, once its ``hello`` names a member, the cap per
member name), counts the channels the node has open (inbound and outbound, members and clients)
and the watch subscriptions they carry. Every refusal is counted in the node's refusal map under
its reason. The node runtime calls it around each connection; nothing here waits.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ._limits import NetworkLimits, effective_max_connections
from ._types import Address

log = logging.getLogger("gossipkv.node")


@dataclass(slots=True)
class Admission:
    """One accepted connection's place in the table, from accept until it closes.

    Attributes:
      source: the remote IP address.
      member: the member name its ``hello`` claimed, once identified as a member (it then no
        longer counts against its source).
    """

    source: str
    member: str | None = None


class ConnectionTable:
    """Caps and counts for one node's connections (see :class:`NetworkLimits`).

    Args:
      limits: the node's limits.
      refusals: the node's refusal counters (shared with the rest of the node).

    Attributes:
      max_connections: the cap on accepted connections in force (``limits.max_connections``,
        lowered by :meth:`fit_descriptor_limit`).
    """

    def __init__(self, limits: NetworkLimits, refusals: Counter[str]) -> None:
        self.limits = limits
        self.refusals = refusals
        self.max_connections = limits.max_connections
        self.accepted = 0
        self._by_source: Counter[str] = Counter()
        self._by_member: Counter[str] = Counter()
        self.peer_channels = 0
        self.client_channels = 0
        self.watches = 0

    def fit_descriptor_limit(self, soft_nofile: int | None, open_fds: int) -> None:
        """Lower :attr:`max_connections` so accepting cannot exhaust the descriptor limit."""
        fitted = effective_max_connections(self.limits.max_connections, soft_nofile, open_fds)
        if fitted < self.max_connections:
            log.warning(
                "accepting at most %d connections (max_connections %d): the file descriptor "
                "limit is %s with %d open; raise it with ulimit -n",
                fitted,
                self.limits.max_connections,
                soft_nofile,
                open_fds,
            )
        self.max_connections = fitted

    # --- accepted connections --------------------------------------------------------------

    def accept(self, remote_address: str) -> Admission | None:
        """Admit a connection just accepted from ``remote_address``, or refuse it.

        Returns:
          Its :class:`Admission` (pass it to :meth:`release` when it closes), or ``None``
          when a cap is reached (counted as ``connection_limit`` or ``source_limit``): close it
          without reading anything.
        """
        try:
            source = Address.parse(remote_address).host
        except ValueError:
            source = remote_address
        if self.accepted >= self.max_connections:
            self.refusals["connection_limit"] += 1
            return None
        if self._by_source[source] >= self.limits.max_connections_per_source:
            self.refusals["source_limit"] += 1
            return None
        self.accepted += 1
        self._by_source[source] += 1
        return Admission(source)

    def identify(self, admission: Admission, name: str, *, known_member: bool) -> bool:
        """Record who a connection's ``hello`` says it is.

        Args:
          admission: from :meth:`accept`.
          name: the ``hello``'s node id (``"client"`` for clients).
          known_member: whether ``name`` is a member this node knows of.

        Returns:
          False when the member already has ``max_connections_per_peer`` connections here
          (counted as ``peer_limit``): close it without answering its ``hello``.
        """
        if name == "client":
            return True
        if self._by_member[name] >= self.limits.max_connections_per_peer:
            self.refusals["peer_limit"] += 1
            return False
        self._by_member[name] += 1
        admission.member = name
        if known_member:
            # A member on the same host as others (a loopback cluster) is not a stranger.
            self._uncount_source(admission)
        return True

    def release(self, admission: Admission) -> None:
        """Forget a connection that closed."""
        self.accepted -= 1
        self._uncount_source(admission)
        if admission.member is not None:
            self._by_member[admission.member] -= 1
            if not self._by_member[admission.member]:
                del self._by_member[admission.member]
            admission.member = None

    def _uncount_source(self, admission: Admission) -> None:
        if admission.source:
            self._by_source[admission.source] -= 1
            if not self._by_source[admission.source]:
                del self._by_source[admission.source]
            admission.source = ""

    # --- channels and watches --------------------------------------------------------------

    @contextmanager
    def channel(self, *, member: bool) -> Iterator[None]:
        """Count one open channel (inbound or outbound) for as long as the block runs."""
        if member:
            self.peer_channels += 1
        else:
            self.client_channels += 1
        try:
            yield
        finally:
            if member:
                self.peer_channels -= 1
            else:
                self.client_channels -= 1

    def watch_refusal(self, subscriptions: int) -> str | None:
        """Why one more watch on a channel holding ``subscriptions`` must be refused, if so
        (counted as ``watch_limit``), else ``None``."""
        if subscriptions >= self.limits.max_watches_per_connection:
            reason = (
                f"too many watches on one connection (limit "
                f"{self.limits.max_watches_per_connection}); open another connection"
            )
        elif self.watches >= self.limits.max_watches:
            reason = f"too many watches on this peer (limit {self.limits.max_watches})"
        else:
            return None
        self.refusals["watch_limit"] += 1
        return reason
