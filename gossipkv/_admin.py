"""The operator's toolbox on the peer side (issue 16): run-time log level, the log fan-out that
``gossipkv monitor`` subscribes to, one page of a partition's live keys, and the effective
configuration as a plain map.

Every input is checked here before it touches anything, and every answer is bounded: a key page
holds at most :data:`MAX_KEYS_PAGE` keys and reads at most :data:`MAX_KEYS_SCANNED` records; a
monitor subscriber gets a bounded buffer and loses the newest lines when it falls behind, so a
slow reader never holds the peer up.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from ._dvv import partition_of
from ._errors import GossipKVError, InvalidArgument
from ._kv import encode_wire_clock, live_values
from .storage import StorageEngine, StorageLimits
from .storage._base import decode_clock

#: Level names ``log-level`` and ``monitor`` accept.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
#: The logger every gossipkv module logs under.
LOGGER = "gossipkv"
#: The most keys one ``KeysRequest`` page returns.
MAX_KEYS_PAGE = 1000
#: The most records one page reads (tombstone-only keys are read and skipped).
MAX_KEYS_SCANNED = 4 * MAX_KEYS_PAGE
#: A page with clocks stops once they add up to this many bytes (frames are capped at 16 MiB).
MAX_CLOCK_PAGE_BYTES = 4 << 20
#: Records read together.
_BATCH = 256
#: Lines held for one monitor subscriber before the newest are dropped.
MONITOR_BUFFER = 256
#: The longest line a monitor sends (longer ones are cut).
MAX_MONITOR_LINE = 4096


def level_of(name: str) -> int:
    """The ``logging`` level called ``name``.

    Raises:
      RemoteError: ``bad_request`` for another name.
    """
    level = LEVELS.get(name.lower()) if isinstance(name, str) and len(name) < 16 else None
    if level is None:
        raise InvalidArgument(f"unknown log level {name[:16]!r}: {', '.join(LEVELS)}")
    return level


def set_log_level(name: str) -> dict[str, object]:
    """Set the level of the ``gossipkv`` loggers; returns the previous and the new level.

    Raises:
      RemoteError: ``bad_request`` for an unknown level name.
    """
    level = level_of(name)
    logger = logging.getLogger(LOGGER)
    previous = logging.getLevelName(logger.getEffectiveLevel()).lower()
    logger.setLevel(level)
    now = logging.getLevelName(level).lower()
    # At warning, so the change shows at any level (it says who turned the logs down).
    logger.warning("log level set to %s (was %s) by an operator", now, previous)
    return {"previous": previous, "level": now}


def current_log_level() -> str:
    return logging.getLevelName(logging.getLogger(LOGGER).getEffectiveLevel()).lower()


class LogFanout(logging.Handler):
    """Copies the records of the ``gossipkv`` loggers to monitor subscribers.

    Installed on the ``gossipkv`` logger while at least one subscriber listens. Records logged
    from worker threads (disk I/O runs in threads) are handed to the Trio thread with
    ``run_sync_soon``; a subscriber whose buffer is full loses the record (counted in
    :attr:`dropped`).
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._subscribers: list[tuple[int, trio.MemorySendChannel[tuple[str, str, str]]]] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._thread = 0
        self.dropped = 0

    @contextmanager
    def subscribe(
        self, send: trio.MemorySendChannel[tuple[str, str, str]], level: int
    ) -> Iterator[None]:
        """Deliver records at ``level`` and up to ``send`` (``("log", level, line)``) inside."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.get_ident()
        entry = (level, send)
        logger = logging.getLogger(LOGGER)
        self._subscribers.append(entry)
        if len(self._subscribers) == 1:
            logger.addHandler(self)
        try:
            yield
        finally:
            self._subscribers.remove(entry)
            if not self._subscribers:
                logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)[:MAX_MONITOR_LINE]
        except Exception:  # a record that cannot be formatted is not worth a crash
            return
        item = ("log", record.levelname.lower(), line)
        if threading.get_ident() == self._thread:
            self._deliver(record.levelno, item)
        elif self._token is not None:
            try:
                self._token.run_sync_soon(self._deliver, record.levelno, item)
            except trio.RunFinishedError:
                pass

    def _deliver(self, levelno: int, item: tuple[str, str, str]) -> None:
        for level, send in list(self._subscribers):
            if levelno < level:
                continue
            try:
                send.send_nowait(item)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


#: Seconds a snapshot of the replica's keys by partition serves ``keys`` pages: a scan of
#: every partition reads the key index once, not once per page.
KEY_SNAPSHOT_SECONDS = 10.0


class KeySnapshot:
    """The replica's keys grouped by partition, sorted, rebuilt at most every
    :data:`KEY_SNAPSHOT_SECONDS` (keys written since may be missing from a page, as from any
    scan of a changing store)."""

    def __init__(self) -> None:
        self._at = -math.inf
        self._q = 0
        self._parts: dict[int, list[str]] = {}
        self._lock = trio.Lock()

    async def keys(self, storage: StorageEngine, partition: int, partitions: int) -> list[str]:
        async with self._lock:
            now = trio.current_time()
            if partitions != self._q or now - self._at > KEY_SNAPSHOT_SECONDS:
                self._parts = {}  # let the old snapshot go before building the new one
                everything = await storage.keys(0, 1)  # sorted
                parts: dict[int, list[str]] = {}
                for i, key in enumerate(everything):
                    parts.setdefault(partition_of(key, partitions), []).append(key)
                    if i % 4096 == 4095:
                        await trio.lowlevel.checkpoint()  # hashing is a CPU loop
                self._parts, self._q, self._at = parts, partitions, trio.current_time()
            return self._parts.get(partition, [])


async def keys_page(
    storage: StorageEngine,
    limits: StorageLimits,
    *,
    snapshot: KeySnapshot | None = None,
    partition: int,
    partitions: int,
    after: str,
    limit: int,
    prefix: str,
    clocks: bool = False,
) -> dict[str, object]:
    """One page of the live keys of ``partition`` in this replica, in key order.

    Returns:
      ``{"partition", "keys": [...], "next": key | None}``: ask again with ``after=next`` until
      ``next`` is ``None``. A key holding only tombstones is skipped. With ``clocks``, also
      ``"clocks"``: each key's whole clock as replicas exchange it, and a page stops early at
      :data:`MAX_CLOCK_PAGE_BYTES` of them.

    Raises:
      RemoteError: ``bad_request`` for a partition out of range, a limit out of 1..1000, or an
        ``after``/``prefix`` longer than a key may be.
    """
    if not 0 <= partition < partitions:
        raise InvalidArgument(f"partition {partition} is not in 0..{partitions - 1}")
    if not 1 <= limit <= MAX_KEYS_PAGE:
        raise InvalidArgument(f"limit must be 1..{MAX_KEYS_PAGE}, got {limit}")
    for name, text in (("after", after), ("prefix", prefix)):
        if len(text.encode("utf-8", "surrogatepass")) > limits.max_key_bytes:
            raise InvalidArgument(f"{name} is longer than a key may be")
    if snapshot is not None:
        keys = await snapshot.keys(storage, partition, partitions)
    else:
        keys = await storage.keys(partition, partitions)
    start = bisect.bisect_right(keys, after) if after else 0
    if prefix and prefix > (after or ""):
        start = max(start, bisect.bisect_left(keys, prefix))
    found: list[str] = []
    wire: list[bytes] = []
    wire_bytes = 0
    i = start
    scanned = 0
    while (
        i < len(keys)
        and len(found) < limit
        and scanned < MAX_KEYS_SCANNED
        and wire_bytes < MAX_CLOCK_PAGE_BYTES
    ):
        # A batch of candidates, read together (one thread hop for a log engine).
        batch: list[str] = []
        while i < len(keys) and len(batch) < min(_BATCH, limit - len(found)):
            key = keys[i]
            if prefix and not key.startswith(prefix):
                if key > prefix:
                    i = len(keys)  # sorted: no later key starts with it
                    break
                i += 1
                continue
            batch.append(key)
            i += 1
        scanned += len(batch)
        live: dict[str, bytes] = {}
        async for key, raw in storage.records(batch):
            try:
                clock = decode_clock(raw, key, limits)
            except GossipKVError:
                continue  # an unreadable record is the engine's to quarantine, not ours
            if live_values(clock):
                live[key] = encode_wire_clock(clock) if clocks else b""
        for k in batch:
            if k in live:
                found.append(k)
                if clocks:
                    wire.append(live[k])
                    wire_bytes += len(live[k])
        await trio.lowlevel.checkpoint()
    # Resume after the last key examined; none left: the last page.
    next_key = keys[i - 1] if i < len(keys) else None
    page: dict[str, object] = {"partition": partition, "keys": found, "next": next_key}
    if clocks:
        page["clocks"] = wire
    return page


def plain_config(obj: Any) -> dict[str, object]:
    """A configuration dataclass as a plain map (``inf`` as the string ``"inf"``)."""
    out: dict[str, object] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = "inf" if isinstance(value, float) and math.isinf(value) else value
    return out
