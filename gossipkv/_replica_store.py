"""What background replica work may use of this peer's data path, and the data path's settings.

Anti-entropy, ownership handoff and the tombstone reaper (:mod:`gossipkv._antientropy`,
:mod:`gossipkv._handoff`, :mod:`gossipkv._reaper`) run beside the coordinator and the replica.
They see the data path only through :class:`ReplicaStore`: this peer's engine, the table and
who is reachable, single-replica reads and writes, and the per-key lock. They never import
:mod:`gossipkv._kv` (an import-linter contract holds that), so the service can change inside
without them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from ._dvv import DVVSet, Sibling
from ._messages import Message
from ._partitions import PartitionTable
from .storage import StorageEngine, StorageLimits

Clock = DVVSet[Sibling]
SendRequest = Callable[[str, Message], Awaitable[Message]]


@dataclass(frozen=True, slots=True)
class KVConfig:
    """Defaults of the data path. ``r`` and ``w`` may be overridden per request (1..N).

    ``Node(kv=KVConfig(r=1, w=3))``; :class:`Node` refuses ``r`` or ``w`` above
    ``GossipConfig.replicas`` (N) with :exc:`ConfigError`.

    Attributes:
      r: replicas a read waits for.
      w: replicas that must store a write before it is acknowledged.
      sloppy_quorum: stand in for an unreachable owner with the next reachable member, which
        keeps a durable hint and hands the value over when the owner is back.
      blocking_read_repair: a read waits for its repairs, so successive quorum reads never go
        backwards (by default repairs run after the read returns, at most
        ``max_pending_repairs`` at a time; more are skipped and counted).
      replica_timeout: seconds a coordinator waits for one replica's answer.
      max_pending_repairs: background read repairs in flight at once.
      idempotency_cache: client writes remembered by ``(client id, sequence)``, so a retry
        returns the first result instead of writing a second sibling.
      handoff_interval: seconds between attempts to hand hinted writes to their owners.
      last_write_wins: lossy, opt-in, for comparison only: the newest write replaces every
        sibling, so concurrent writes are silently lost.
      anti_entropy_interval: seconds (jittered) between anti-entropy rounds; each round compares
        one partition this peer owns with one other owner and repairs what differs. Partitions a
        new table gives this peer are pulled from their other owners at once (every
        ``handoff_interval``), not a round at a time. 0 disables both.
      anti_entropy_rebuild_interval: seconds (jittered) between checks of the anti-entropy
        Merkle trees against the records read back from the store (every key is read once a
        check); a tree that disagrees is logged, counted and replaced. 0 disables the checks
        (as does an ``anti_entropy_interval`` of 0).
      ownership_handoff_interval: seconds (jittered) between ownership handoff rounds; each round
        sends a bounded batch of the keys this peer holds for partitions it no longer owns to
        their current owners (by ``sync``). 0 disables it.
      max_inflight_bytes: the memory budget of the reads and writes this peer coordinates at
        once, with the replies queued for clients that have not read them yet: each operation
        reserves an estimate of what it will hold (twice N+1 copies of the key's stored size,
        plus the value written) until its replicas answered; more work waits, and its
        connection is not read meanwhile (backpressure). One larger operation runs alone.
      tombstone_grace: seconds a deleted key's tombstone is kept at least; after it, the
        tombstone is reaped once every owner of its partition holds it (see
        :mod:`gossipkv._reaper`), hints held longer are dropped, and a member that was down
        longer wipes its replica before serving. ``inf`` keeps every tombstone. It must exceed
        the longest outage you will repair by handoff instead of rebuilding the member.
    """

    r: int = 2
    w: int = 2
    sloppy_quorum: bool = True
    blocking_read_repair: bool = False
    replica_timeout: float = 1.0
    max_pending_repairs: int = 256
    idempotency_cache: int = 10_000
    handoff_interval: float = 1.0
    #: Lossy, opt-in, for comparison only: a put ignores its context and replaces every stored
    #: sibling, and replicas keep just the value with the newest (HLC stamp, actor). Concurrent
    #: writes are silently lost; a Jepsen-style test uses it as the control that must show losses.
    last_write_wins: bool = False
    anti_entropy_interval: float = 10.0
    anti_entropy_rebuild_interval: float = 4 * 3600.0
    ownership_handoff_interval: float = 5.0
    max_inflight_bytes: int = 64 * 1024 * 1024
    tombstone_grace: float = 3600.0

    def validate(self) -> None:
        """Check the settings on their own (``r``/``w`` against N is checked by :class:`NodeConfig`).

        Raises:
          ValueError: naming the first bad setting.
        """
        if self.r < 1 or self.w < 1:
            raise ValueError("r and w must be at least 1")
        if self.replica_timeout <= 0 or self.handoff_interval <= 0:
            raise ValueError("timeouts must be > 0")
        if self.anti_entropy_interval < 0:
            raise ValueError("anti_entropy_interval must be >= 0 (0 disables anti-entropy)")
        if self.anti_entropy_rebuild_interval < 0:
            raise ValueError(
                "anti_entropy_rebuild_interval must be >= 0 (0 disables the tree checks)"
            )
        if self.ownership_handoff_interval < 0:
            raise ValueError(
                "ownership_handoff_interval must be >= 0 (0 disables ownership handoff)"
            )
        if self.max_inflight_bytes < 64 * 1024:
            raise ValueError("max_inflight_bytes must be at least 64 KiB")
        if not self.tombstone_grace > 0:  # NaN too
            raise ValueError("tombstone_grace must be > 0 seconds (inf keeps every tombstone)")


class ReplicaStore(Protocol):
    """This peer's replica, as background work sees it (``KeyValueService`` is one).

    Attributes:
      node_id: this peer's name.
      storage: the replica's engine.
      config, limits: the data path's settings and size limits.
      changes: how many clocks this replica stored that differed from what it held (a change
        mark: work that found nothing to do may skip a round while it stands still).
    """

    @property
    def node_id(self) -> str: ...

    @property
    def storage(self) -> StorageEngine: ...

    @property
    def config(self) -> KVConfig: ...

    @property
    def limits(self) -> StorageLimits: ...

    @property
    def changes(self) -> int: ...

    def table(self) -> PartitionTable | None:
        """The newest partition table this peer accepted."""
        ...

    def reachable(self) -> set[str]:
        """The members this peer can send to now (itself included)."""
        ...

    async def send(self, member: str, message: Message) -> Message:
        """Send one request to ``member`` and return its answer (bounded by the caller)."""
        ...

    async def read_replica(self, member: str, key: str) -> Clock | None:
        """``member``'s own clock of ``key`` (this peer's when it is ``member``)."""
        ...

    async def write_replica(self, member: str, key: str, clock: Clock, hint_for: str) -> None:
        """Have ``member`` merge ``clock`` into its copy of ``key`` (by ``sync``)."""
        ...

    async def apply(self, key: str, clock: Clock, *, hint_for: str = "") -> None:
        """Merge ``clock`` into this replica's copy of ``key``."""
        ...

    def lock(self, key: str) -> AbstractAsyncContextManager[None]:
        """Hold this replica's write lock of ``key`` (one read-modify-write at a time)."""
        ...

    def count_error(self, exc: BaseException) -> None:
        """Count a failed replica call in the statistics (by error type)."""
        ...
