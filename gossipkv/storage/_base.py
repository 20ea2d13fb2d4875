"""The storage engine interface, its limits, its statistics, and record encoding shared by engines.

Owns the one place where the storage limits live (:class:`StorageLimits`: key bytes, encoded value
bytes, siblings per key), the validation every engine applies before accepting a put, the canonical
record encoding of a DVVSet clock, and the per-partition hash anti-entropy will compare.
"""

from __future__ import annotations

import abc
import enum
import hashlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gossipkv import _dvv
from gossipkv._codec import dumps_canonical, loads_value
from gossipkv._dvv import DVVSet, Sibling
from gossipkv._errors import (
    DecodeError,
    InvalidClock,
    InvalidKey,
    KeyTooLarge,
    RecordTooLarge,
    StorageCorrupt,
    StorageError,
    ValueNotEncodable,
    ValueTooDeep,
    ValueTooLarge,
)
from gossipkv._merkle import RecordHashes

#: The clock a replica stores for one key.
Clock = DVVSet[Sibling]

#: The deepest a value can nest and still fit every frame and stored clock that carries it
#: (frames nest at most 64 deep; a value travels at most 3 levels down in one).
MAX_VALUE_DEPTH = 48


class FsyncPolicy(enum.Enum):
    """When a put is acknowledged relative to the disk.

    ``ALWAYS``: every record is written and fsynced on its own before its put returns.
    ``BATCH`` (default): group commit; concurrent puts share one write and one fsync and are all
    acknowledged after it. ``NONE``: acknowledged once the OS has the bytes (survives ``kill -9``,
    not a power cut); files are still fsynced when a segment is sealed and on close.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class StorageLimits:
    """Size limits on what a write may store (DESIGN §3). One place; engines and the data path
    take an instance.

    A coordinator refuses a write that would break a limit (the write changes nothing). A
    replica merging clocks from other replicas (replication, read repair, handoff) accepts up
    to ``replica_slack`` times ``max_siblings`` and ``max_record_bytes``, because writes that
    each passed the limits at different coordinators can only be merged, never refused, without
    losing an acknowledged value; reads show at most the limits (see :func:`gossipkv._dvv.view`).

    Attributes:
      max_key_bytes: a key's UTF-8 length.
      max_value_bytes: a value's own canonical CBOR encoding, as the user sees it (metadata
        such as the request id is not counted).
      max_value_depth: arrays and maps nested in a value (a scalar is 0 deep, ``[1]`` is 1).
      max_siblings: values one key may hold after a write; a read returns at most this many.
      max_record_bytes: the encoded clock of one key after a write (every sibling with its
        metadata and causal history); a read returns at most this many bytes of values.
      max_context_bytes: the encoded causal context a write may carry.
      replica_slack: how far merged replica state may exceed the two limits above.
    """

    max_key_bytes: int = 1024
    max_value_bytes: int = 1024 * 1024
    max_value_depth: int = 32
    max_siblings: int = 100
    max_record_bytes: int = 4 * 1024 * 1024
    max_context_bytes: int = 256 * 1024
    replica_slack: int = 3

    @property
    def max_stored_siblings(self) -> int:
        """The most values a replica stores for one key after merging other replicas' state."""
        return self.max_siblings * self.replica_slack

    @property
    def max_stored_bytes(self) -> int:
        """The largest encoded clock a replica stores for one key after merging."""
        return self.max_record_bytes * self.replica_slack

    @property
    def max_clock_depth(self) -> int:
        """The nesting a stored or received clock may have: its own arrays plus a value's."""
        return _dvv.CLOCK_NESTING + self.max_value_depth + 1  # + 1: a sibling's metadata map

    def validate(self) -> None:
        """Check the limits against each other and the wire.

        Raises:
          ValueError: naming the first bad limit.
        """
        if min(self.max_key_bytes, self.max_value_bytes, self.max_siblings) < 1:
            raise ValueError("storage limits must be >= 1")
        if not 1 <= self.max_value_depth <= MAX_VALUE_DEPTH:
            raise ValueError(
                f"max_value_depth must be in 1..{MAX_VALUE_DEPTH} (frames nest at most 64 deep)"
            )
        if self.max_record_bytes < self.max_value_bytes:
            raise ValueError("max_record_bytes must be at least max_value_bytes")
        if self.replica_slack < 1:
            raise ValueError("replica_slack must be >= 1")
        if self.max_context_bytes < 1024:
            raise ValueError("max_context_bytes must be at least 1 KiB")


DEFAULT_LIMITS = StorageLimits()


class NotCached(enum.Enum):
    """What :meth:`StorageEngine.read_cached` answers when a read would have to wait."""

    NOT_CACHED = "not_cached"


NOT_CACHED = NotCached.NOT_CACHED


@dataclass(frozen=True, slots=True)
class StorageStatistics:
    """A frozen snapshot of an engine's counters and gauges.

    ``commit_batches`` counts group commits; ``max_commit_batch`` and ``mean_commit_batch`` describe
    how many puts shared one write (and, unless ``fsync`` is ``none``, one fsync).
    """

    engine: str
    fsync: str
    keys: int
    records: int
    segments: int
    disk_bytes: int
    live_bytes: int
    puts: int
    gets: int
    fsyncs: int
    commit_batches: int
    max_commit_batch: int
    mean_commit_batch: float
    pending_writes: int
    compactions: int
    compaction_errors: int
    bytes_reclaimed: int
    corrupt_records_skipped: int
    torn_tail_truncations: int
    quarantined_records: int
    hint_files_loaded: int
    recovery_seconds: float
    #: Keys removed by :meth:`StorageEngine.delete` (reaped tombstones, forgotten hints).
    deletes: int = 0
    #: Gets of records the page cache held, read on the event loop with no thread hand-off
    #: (log engine; stays 0 where the file system refuses ``RWF_NOWAIT``).
    page_cache_reads: int = 0
    #: Delete markers the log engine still keeps on disk (dropped by compaction once no older
    #: record of their key remains; each costs a few bytes of memory until then).
    delete_markers: int = 0


class StorageEngine(abc.ABC):
    """Durable versioned records: one DVVSet clock per key (DESIGN §9).

    Engines merge nothing: the caller computes the clock (``update`` at a coordinator, ``sync`` at a
    replica) and stores it whole. A local read *error* raises :class:`~gossipkv.StorageError`; it is
    never reported as "not found" (pitfall P5).
    """

    #: Fresh random 64-bit number drawn at every open; feed it to ``ActorMint`` so a restarted
    #: replica (or one that lost its disk) never reuses a dot.
    incarnation: int

    #: The record hash of every stored key (:mod:`gossipkv._merkle`), kept in memory beside the
    #: key index and changed exactly where it changes (every put, quarantine, recovery), so the
    #: Merkle trees anti-entropy compares follow every write path without a read.
    record_hashes: RecordHashes

    #: Called with a key whose stored record was unreadable and has been quarantined (moved
    #: aside and forgotten: the key now reads as absent here). The data path sets it to repair
    #: the key from the other replicas. It must not block.
    on_quarantine: Callable[[str], None] | None = None

    def damaged_at_open(self) -> list[str]:
        """Keys whose newest record was found damaged when the engine opened: kept aside, and
        the key reads as an older version or as absent here until it is repaired."""
        return []

    #: True when :meth:`get_nowait` and :meth:`put_nowait` work: an engine that never waits for a
    #: disk (the memory engine). The data path then answers replica requests without a task.
    nowait: bool = False

    def get_nowait(self, key: str) -> Clock | None:
        """:meth:`get` without waiting, for engines with ``nowait`` (same result and errors).

        Raises:
          NotImplementedError: the engine has to wait for its disk (``nowait`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot read without waiting")

    def encoded_nowait(self, key: str) -> tuple[Clock, bytes] | None:
        """The stored clock of ``key`` and its canonical CBOR (as :func:`encode_clock` gives it),
        or ``None``; for engines with ``nowait``. Not counted as a read in the statistics.

        Raises:
          NotImplementedError: the engine has to wait for its disk (``nowait`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot read without waiting")

    def read_cached(self, key: str) -> Clock | NotCached | None:
        """The stored clock of ``key`` (or ``None``) when it can be had without waiting, else
        :data:`NOT_CACHED` (call :meth:`get`). An engine with ``nowait`` always has it; the log
        engine has it when the page cache holds the record. Counted as a read when answered.

        Raises:
          InvalidKey: a bad key. StorageClosed: closed.
        """
        if self.nowait:
            return self.get_nowait(key)
        return NOT_CACHED

    def stored_bytes(self, key: str) -> int | None:
        """The encoded size of ``key``'s stored clock, from the index (no read), or ``None``
        when the key is not stored. The data path uses it to bound a key's growth cheaply."""
        return None

    def put_nowait(self, key: str, clock: Clock, *, encoded: bytes | None = None) -> None:
        """:meth:`put` without waiting, for engines with ``nowait`` (same checks and errors).

        ``encoded`` is the clock's canonical CBOR when the caller already has it (a replica
        storing exactly the clock it received); the engine then does not encode it again.

        Raises:
          NotImplementedError: the engine has to wait for its disk (``nowait`` is False).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot write without waiting")

    @abc.abstractmethod
    async def get(self, key: str) -> Clock | None:
        """The stored clock of ``key``, or ``None`` if the key was never stored here.

        Raises:
          InvalidKey: if the key is not a valid key (see :class:`StorageLimits`).
          StorageError: on a local read error (``StorageCorrupt`` if a checksum failed).
          StorageClosed: if the engine is closed.
        """

    @abc.abstractmethod
    async def delete(self, key: str) -> bool:
        """Forget ``key``: it reads as never stored here (durable under the fsync policy on
        return). The data path calls it only for a key it may forget (a reaped tombstone, a
        delivered or expired hint), under its key lock; the engine merges nothing.

        Returns:
          Whether the key was stored.

        Raises:
          InvalidKey, KeyTooLarge: for a bad key.
          StorageFull, StorageError: if the disk refused the write.
          StorageClosed: if the engine is closed.
        """

    @abc.abstractmethod
    async def put(self, key: str, clock: Clock) -> None:
        """Store ``clock`` as the new version of ``key``; durable under the fsync policy on return.

        If cancelled while waiting for the disk, the write may or may not be stored.

        Raises:
          InvalidKey, KeyTooLarge: for a bad key.
          InvalidClock, TooManySiblings: for a clock that fails validation.
          ValueTooLarge, ValueNotEncodable: for a bad value.
          StorageFull, StorageError: if the disk refused the write (nothing stored is damaged).
          StorageClosed: if the engine is closed.
        """

    async def keys(self, partition: int, partitions: int) -> list[str]:
        """The keys of one Fixed Partition, sorted, from the index (no record is read).

        Engines with an index override it; this default scans."""
        return sorted([key async for key, _ in self.scan(partition, partitions)])

    async def records(self, keys: list[str]) -> AsyncIterator[tuple[str, bytes]]:
        """The stored canonical clock bytes of each of ``keys`` still stored, read back from the
        store (keys not stored are skipped; an unreadable record is quarantined and skipped).
        The Merkle tree checks hash them. Engines override it to read in batches."""
        for key in keys:
            clock = await self.get(key)
            if clock is not None:
                yield key, dumps_canonical(_dvv.clock_to_plain(clock))

    @abc.abstractmethod
    def scan(self, partition: int, partitions: int) -> AsyncIterator[tuple[str, Clock]]:
        """Iterate ``(key, clock)`` over the keys of one Fixed Partition (a snapshot of keys).

        Keys are those with ``partition_of(key, partitions) == partition``; keys written during
        the scan may or may not appear.
        """

    @abc.abstractmethod
    async def partition_hashes(self, partitions: int) -> dict[int, bytes]:
        """A digest per non-empty partition over its sorted keys and canonical clock bytes.

        Equal contents give equal digests on every replica (anti-entropy compares them).
        """

    @abc.abstractmethod
    async def compact(self) -> None:
        """Reclaim the space of superseded records now (the log engine also does it in the
        background). Never blocks reads or writes."""

    async def snapshot(self, dest: Path) -> tuple[int, int]:
        """Write a consistent copy of the store into ``dest`` (a directory that must not exist
        yet), openable as a data dir of its own; returns ``(files, bytes)``.

        Raises:
          StorageError: this engine keeps nothing on disk (the memory engine), ``dest`` exists,
            or the copy failed.
        """
        raise StorageError(
            f"the {type(self).__name__} keeps nothing on disk to snapshot (a peer without "
            "--data-dir): use `gossipkv backup` for a dump of the cluster's keys"
        )

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Flush and close; later calls raise :class:`~gossipkv.StorageClosed`. Idempotent."""

    @abc.abstractmethod
    def statistics(self) -> StorageStatistics:
        """A frozen snapshot of counters and gauges."""


# --- validation and record encoding shared by engines -----------------------------------------


def encode_key(key: object, limits: StorageLimits) -> bytes:
    """The UTF-8 bytes of a valid key.

    Raises:
      InvalidKey: if ``key`` is not a non-empty string encodable as UTF-8.
      KeyTooLarge: if it is longer than ``limits.max_key_bytes`` bytes.
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"a key must be a non-empty string, got {type(key).__name__}")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"key is not valid UTF-8: {exc}") from exc
    if len(raw) > limits.max_key_bytes:
        raise KeyTooLarge(f"key of {len(raw)} bytes exceeds the {limits.max_key_bytes}-byte limit")
    return raw


def check_key(key: object, limits: StorageLimits) -> None:
    """:func:`encode_key`'s checks without the bytes, cheap for the usual key.

    A non-empty ASCII ``str`` within the limit is valid (its UTF-8 bytes are its characters),
    decided by three C calls; any other key gets :func:`encode_key`'s full check and errors.

    Raises:
      InvalidKey, KeyTooLarge: as :func:`encode_key`.
    """
    if type(key) is str and key.isascii() and 0 < len(key) <= limits.max_key_bytes:
        return
    encode_key(key, limits)


def encode_clock(clock: object, limits: StorageLimits) -> bytes:
    """Validate ``clock`` and return its canonical CBOR (equal clocks give equal bytes).

    Raises:
      InvalidClock, TooManySiblings, ValueTooLarge, ValueNotEncodable: as for ``put``.
    """
    check_clock(clock, limits)
    assert isinstance(clock, DVVSet)
    try:
        data = dumps_canonical(_dvv.clock_to_plain(clock))
    except ValueError as exc:
        raise ValueNotEncodable(str(exc)) from exc
    check_encoded_size(clock, data, limits)
    return data


def check_clock(clock: object, limits: StorageLimits) -> None:
    """The checks of :func:`encode_clock` that need no encoding.

    Raises:
      InvalidClock, TooManySiblings: as for ``put``.
    """
    if not isinstance(clock, DVVSet):
        raise InvalidClock(f"expected a DVVSet clock, got {type(clock).__name__}")
    _dvv.validate(clock, max_siblings=limits.max_stored_siblings)
    for entry in clock.entries:  # every value: a valid clock has no anonymous ones
        for value in entry.values:
            if not isinstance(value, Sibling):
                raise InvalidClock(f"clock values must be Sibling, got {type(value).__name__}")


def check_encoded_size(clock: Clock, data: bytes, limits: StorageLimits) -> None:
    """Refuse a clock a replica must not store (``data`` is its encoding): one holding a value
    over the value limit, or one larger than a replica stores for a key.

    Raises:
      ValueTooLarge: a single value encodes to more than ``limits.max_value_bytes``.
      RecordTooLarge: the whole clock encodes to more than ``limits.max_stored_bytes``.
    """
    if len(data) > limits.max_value_bytes:
        # Only then is any single value possibly over the limit: check them one by one.
        for value in _dvv.values(clock):
            if value.tombstone:
                continue
            size = len(dumps_canonical(value.data))
            if size > limits.max_value_bytes:
                raise ValueTooLarge(
                    f"a value of {size} encoded bytes exceeds the "
                    f"{limits.max_value_bytes}-byte limit"
                )
    if len(data) > limits.max_stored_bytes:
        raise RecordTooLarge(
            f"the key's clock would be {len(data)} bytes; a replica stores at most "
            f"{limits.max_stored_bytes}"
        )


def check_value(value: object, limits: StorageLimits) -> int:
    """Check a value a client wants to store, before any work is done; returns its encoded size.

    Raises:
      ValueNotEncodable: the value is not plain CBOR data.
      ValueTooLarge: it encodes to more than ``limits.max_value_bytes``.
      ValueTooDeep: it nests arrays and maps more than ``limits.max_value_depth`` deep.
    """
    check_plain(value, limits.max_value_depth)
    try:
        size = len(dumps_canonical(value))
    except ValueError as exc:
        raise ValueNotEncodable(str(exc)) from exc
    if size > limits.max_value_bytes:
        raise ValueTooLarge(f"value is {size} bytes encoded; the limit is {limits.max_value_bytes}")
    return size


_SCALARS = (type(None), bool, float, str, bytes)
_INT_RANGE = range(-(2**64), 2**64)  # wider ints need a CBOR bignum tag, which nothing reads


def check_plain(value: object, max_depth: int) -> None:
    """Check that ``value`` is plain CBOR data every peer can encode and read back: None, bool,
    int within 64 bits, float, str, bytes, and lists, tuples and maps of them (map keys text or
    integers), nested at most ``max_depth`` deep. Iterative, so a value nested thousands deep
    costs no recursion; the walk stops at the first fault.

    Raises:
      ValueNotEncodable: another type (a set, a datetime: cbor2 would tag it, and tags are
        refused on the wire and in the stores), or an integer beyond 64 bits.
      ValueTooDeep: arrays and maps nested deeper than ``max_depth``.
    """
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind is int:
            if item not in _INT_RANGE:
                raise ValueNotEncodable("integers must fit in 64 bits")
            continue
        if kind is list or kind is tuple:
            children: Iterable[object] = item  # type: ignore[assignment]
        elif kind is dict:
            for key in item:  # type: ignore[attr-defined]
                if type(key) is not str and type(key) is not int:
                    raise ValueNotEncodable("map keys must be text or integers")
            children = item.values()  # type: ignore[attr-defined]
        else:
            raise ValueNotEncodable(f"{kind.__name__} is not plain CBOR data")
        if depth >= max_depth:
            raise ValueTooDeep(f"value nests arrays or maps more than {max_depth} deep (the limit)")
        stack.extend((child, depth + 1) for child in children)


def decode_clock(data: bytes, where: str, limits: StorageLimits = DEFAULT_LIMITS) -> Clock:
    """Decode stored clock bytes (with the nesting limit every stored clock was checked against,
    so whatever a store accepted it can read back).

    Raises:
      StorageCorrupt: if the bytes are not a valid clock (never served as data).
    """
    try:
        return _dvv.clock_from_plain(loads_value(data, max_depth=limits.max_clock_depth))
    except (DecodeError, InvalidClock) as exc:
        raise StorageCorrupt(f"{where}: stored clock is unreadable: {exc}") from exc


def partition_digests(items: Iterable[tuple[str, bytes]], partitions: int) -> dict[int, bytes]:
    """blake2b per partition over ``(key, canonical clock bytes)`` pairs sorted by key."""
    groups: dict[int, list[tuple[str, bytes]]] = {}
    for key, data in items:
        groups.setdefault(_dvv.partition_of(key, partitions), []).append((key, data))
    out: dict[int, bytes] = {}
    for part, pairs in groups.items():
        h = hashlib.blake2b(digest_size=16)
        for key, data in sorted(pairs):
            kb = key.encode("utf-8")
            h.update(len(kb).to_bytes(4, "big") + kb + len(data).to_bytes(4, "big") + data)
        out[part] = h.digest()
    return out


def empty_statistics(
    engine: str, fsync: str, extra: Mapping[str, int | float]
) -> StorageStatistics:
    """A statistics snapshot with zeros except ``extra`` (for simple engines)."""
    fields: dict[str, int | float] = {
        "keys": 0, "records": 0, "segments": 0, "disk_bytes": 0, "live_bytes": 0, "puts": 0,
        "gets": 0, "fsyncs": 0, "commit_batches": 0, "max_commit_batch": 0,
        "mean_commit_batch": 0.0, "pending_writes": 0, "compactions": 0, "compaction_errors": 0,
        "bytes_reclaimed": 0,
        "corrupt_records_skipped": 0, "torn_tail_truncations": 0, "hint_files_loaded": 0,
        "quarantined_records": 0,
        "recovery_seconds": 0.0,
    }  # fmt: skip
    fields.update(extra)
    return StorageStatistics(engine=engine, fsync=fsync, **fields)  # type: ignore[arg-type]
