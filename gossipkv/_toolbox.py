"""The operator's toolbox on one peer: read-only views of the cluster as this peer sees it.

``gossipkv ring`` (the partition table and who is still pulling), ``owners KEY`` (where a key
lives and which owner holds it now), ``ping`` (every member's round trip, measured from here)
and ``keys`` (a page of this replica's keys, from a snapshot of its key list). The pieces that
need no peer (pages, log levels, plain configs) live in :mod:`gossipkv._admin`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio

from . import _admin
from ._dvv import partition_of
from ._dvv import values as dvv_values
from ._errors import (
    ConnectionClosed,
    DecodeError,
    GossipKVError,
    RemoteError,
    TransportError,
    error_code,
)
from ._kv import KeyValueService
from ._messages import KeysRequest, MembersRequest
from ._peer import Channel
from .membership._gossiper import Gossiper
from .storage import StorageLimits
from .storage._base import encode_key


class Toolbox:
    """The toolbox's views (see the module docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      service: the data path, once it runs.
      channel_to: the connection pool's dial.
      storage_limits: the key size limit (a key is checked before its owners are asked).
      replicas: N, shown before there is a partition table.
      ping_timeout: seconds one member may take to answer a ping.
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        service: Callable[[], KeyValueService],
        channel_to: Callable[[str], Awaitable[Channel]],
        storage_limits: StorageLimits,
        replicas: int,
        ping_timeout: float,
    ) -> None:
        self._gossiper = gossiper
        self._service = service
        self._channel_to = channel_to
        self._storage_limits = storage_limits
        self._replicas = replicas
        self._ping_timeout = ping_timeout
        self._ping_lock = trio.Lock()
        self._key_snapshot = _admin.KeySnapshot()

    def ring(self) -> dict[str, object]:
        """The ``ring --json`` shape: the table, and the partitions members are still pulling."""
        g = self._gossiper()
        table = g.table()
        if table is None:
            return {"epoch": None, "partitions": 0, "replicas": self._replicas, "owners": []}
        pulling = {p: sorted(g.pulling(p)) for p in range(table.q)}
        return {
            "epoch": list(table.epoch),
            "partitions": table.q,
            "replicas": table.n,
            "owners": [list(row) for row in table.owners],
            "pulling": {str(p): who for p, who in pulling.items() if who},
            "under_replicated": g.under_replicated(),
        }

    async def owners(self, key: str) -> dict[str, object]:
        """The ``owners --json`` shape: where ``key`` lives and who holds it now."""
        kv = self._service()
        g = self._gossiper()
        try:
            encode_key(key, self._storage_limits)
        except GossipKVError as exc:
            raise RemoteError(error_code(exc), str(exc)) from exc
        table = g.table()
        if table is None:
            raise RemoteError("not_ready", "the cluster has no partition table yet")
        partition = partition_of(key, table.q)
        reachable = g.reachable_members()
        rows: list[dict[str, object]] = []

        async def ask(owner: str, out: dict[str, object]) -> None:
            try:
                with trio.fail_after(kv.config.replica_timeout):
                    clock = await kv.read_replica(owner, key)
            except (GossipKVError, trio.TooSlowError) as exc:
                out["error"] = str(exc) or "no answer"
                return
            values = [] if clock is None else [s for s in dvv_values(clock) if not s.tombstone]
            out["holds"] = bool(values)
            out["siblings"] = len(values)

        async with trio.open_nursery() as nursery:
            for owner in table.owners[partition]:
                row: dict[str, object] = {
                    "name": owner,
                    "reachable": owner in reachable,
                    "pulling": owner in g.pulling(partition),
                    "holds": False,
                    "siblings": 0,
                }
                rows.append(row)
                if owner in reachable:
                    nursery.start_soon(ask, owner, row)
        return {"key": key, "partition": partition, "epoch": list(table.epoch), "owners": rows}

    async def ping(self) -> dict[str, object]:
        """Ask every member this node knows (but itself, and members gone for good) for its
        member list, all at once, and time each answer."""
        async with self._ping_lock:  # one sweep at a time, however many clients ask
            return await self._ping()

    async def _ping(self) -> dict[str, object]:
        g = self._gossiper()
        rows = [
            m
            for m in g.members(trio.current_time())
            if m.name != g.node_id and m.address and m.status not in ("left", "removed")
        ]
        results: dict[str, dict[str, object]] = {}

        async def ping(name: str, address: str) -> None:
            started = trio.current_time()
            error: str | None = None
            try:
                with trio.fail_after(self._ping_timeout):
                    channel = await self._channel_to(address)
                    await channel.request(MembersRequest())
            except trio.TooSlowError:
                error = "no answer in time"
            except (ConnectionClosed, TransportError, RemoteError, DecodeError) as exc:
                error = str(exc) or type(exc).__name__
            rtt = trio.current_time() - started
            results[name] = {"rtt_ms": None if error else round(rtt * 1000, 3), "error": error}

        async with trio.open_nursery() as nursery:
            for m in rows:
                nursery.start_soon(ping, m.name, str(m.address))
        return {
            "self": g.node_id,
            "members": [
                {
                    "name": m.name,
                    "address": m.address,
                    "status": m.status,
                    "reachable": m.reachable,
                    "phi": m.phi,
                    **results[m.name],
                }
                for m in rows
            ],
        }

    async def keys(self, message: KeysRequest) -> dict[str, object]:
        """A page of this replica's keys (``gossipkv keys``), from a snapshot of its key list."""
        table = self._gossiper().table()
        if table is None:
            raise RemoteError("not_ready", "no partition table yet (the cluster has not formed)")
        return await _admin.keys_page(
            self._service().storage,
            self._storage_limits,
            snapshot=self._key_snapshot,
            partition=message.partition,
            partitions=table.q,
            after=message.after,
            limit=message.limit,
            prefix=message.prefix,
            clocks=message.clocks,
        )
