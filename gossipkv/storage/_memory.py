"""The in-memory storage engine: the embedded default when no data dir is given.

Owns a dict of key -> (clock, canonical bytes), and each key's record hash for the anti-entropy
Merkle trees. Nothing is durable: a restart loses everything, which is why every open draws a new
incarnation (a replica that restarts empty never reuses a dot).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import trio

from gossipkv import _dvv
from gossipkv._errors import StorageClosed
from gossipkv._merkle import RecordHashes, record_hash

from ._base import (
    DEFAULT_LIMITS,
    Clock,
    FsyncPolicy,
    StorageEngine,
    StorageLimits,
    StorageStatistics,
    check_clock,
    check_encoded_size,
    check_key,
    empty_statistics,
    encode_clock,
    encode_key,
    partition_digests,
)


class MemoryEngine(StorageEngine):
    """A :class:`StorageEngine` that keeps every clock in memory (validated like the log engine)."""

    def __init__(self, *, limits: StorageLimits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._data: dict[str, tuple[Clock, bytes]] = {}
        self._closed = False
        self._puts = 0
        self._gets = 0
        self._deletes = 0
        self.incarnation = int.from_bytes(os.urandom(8), "big")
        self.record_hashes = RecordHashes()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosed("the storage engine is closed")

    #: A subclass that overrides ``get``/``put`` (to inject faults, say) must set this to False,
    #: or the data path's inline paths call ``get_nowait``/``put_nowait`` and bypass it.
    nowait = True

    def get_nowait(self, key: str) -> Clock | None:
        self._check_open()
        found = self._stored(key)
        self._gets += 1
        return None if found is None else found[0]

    def encoded_nowait(self, key: str) -> tuple[Clock, bytes] | None:
        self._check_open()
        return self._stored(key)

    def _stored(self, key: str) -> tuple[Clock, bytes] | None:
        """What ``key`` holds, its key checked first unless it is stored: a stored key passed
        :func:`encode_key` under these limits when it was put (reads of hot keys skip it)."""
        found = self._data.get(key) if type(key) is str else None
        if found is None:
            check_key(key, self._limits)
        return found

    def stored_bytes(self, key: str) -> int | None:
        found = self._data.get(key)
        return None if found is None else len(found[1])

    def put_nowait(self, key: str, clock: Clock, *, encoded: bytes | None = None) -> None:
        self._check_open()
        kb = encode_key(key, self._limits)
        if encoded is None:
            data = encode_clock(clock, self._limits)
        else:
            check_clock(clock, self._limits)
            check_encoded_size(clock, encoded, self._limits)
            data = encoded
        self._data[key] = (clock, data)
        self.record_hashes.set(key, record_hash(kb, data), kb)
        self._puts += 1

    def delete_nowait(self, key: str) -> bool:
        """:meth:`delete` without waiting (the memory frees the key's clock at once)."""
        self._check_open()
        encode_key(key, self._limits)
        found = self._data.pop(key, None) is not None
        if found:
            self.record_hashes.discard(key)
        self._deletes += found
        return found

    async def get(self, key: str) -> Clock | None:
        await trio.lowlevel.checkpoint()
        return self.get_nowait(key)

    async def delete(self, key: str) -> bool:
        await trio.lowlevel.checkpoint()
        return self.delete_nowait(key)

    async def put(self, key: str, clock: Clock) -> None:
        await trio.lowlevel.checkpoint()
        self.put_nowait(key, clock)

    async def keys(self, partition: int, partitions: int) -> list[str]:
        self._check_open()
        snapshot = list(self._data)
        out: list[str] = []
        for i in range(0, len(snapshot), 2048):
            await trio.lowlevel.checkpoint()
            out.extend(
                k for k in snapshot[i : i + 2048] if _dvv.partition_of(k, partitions) == partition
            )
        out.sort()
        return out

    async def scan(self, partition: int, partitions: int) -> AsyncIterator[tuple[str, Clock]]:
        self._check_open()
        snapshot = list(self._data)
        keys: list[str] = []
        for i in range(0, len(snapshot), 2048):
            await trio.lowlevel.checkpoint()  # a CPU loop: let other tasks run between chunks
            chunk = snapshot[i : i + 2048]
            keys.extend(k for k in chunk if _dvv.partition_of(k, partitions) == partition)
        for i, key in enumerate(keys):
            if i % 512 == 0:
                await trio.lowlevel.checkpoint()
            found = self._data.get(key)
            if found is not None:
                yield key, found[0]

    async def records(self, keys: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        self._check_open()
        for i, key in enumerate(keys):
            if i % 512 == 0:
                await trio.lowlevel.checkpoint()
            found = self._data.get(key)
            if found is not None:
                yield key, found[1]

    async def partition_hashes(self, partitions: int) -> dict[int, bytes]:
        self._check_open()
        pairs = [(k, v[1]) for k, v in self._data.items()]
        return await trio.to_thread.run_sync(partition_digests, pairs, partitions)

    async def compact(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()

    def statistics(self) -> StorageStatistics:
        live = sum(len(v[1]) for v in self._data.values())
        return empty_statistics(
            "memory",
            FsyncPolicy.NONE.value,
            {
                "keys": len(self._data),
                "records": len(self._data),
                "live_bytes": live,
                "puts": self._puts,
                "gets": self._gets,
                "deletes": self._deletes,
            },
        )
