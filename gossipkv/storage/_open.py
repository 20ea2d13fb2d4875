"""Choosing and opening a storage engine: the log engine on a data dir, else memory."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ._base import DEFAULT_LIMITS, FsyncPolicy, StorageEngine, StorageLimits
from ._log import DEFAULT_COMPACT_BELOW, DEFAULT_SEGMENT_BYTES, open_log_engine
from ._memory import MemoryEngine


@asynccontextmanager
async def open_storage(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    fsync: FsyncPolicy | str = FsyncPolicy.BATCH,
    limits: StorageLimits = DEFAULT_LIMITS,
    segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    compact_below: float = DEFAULT_COMPACT_BELOW,
) -> AsyncIterator[StorageEngine]:
    """Open the storage engine for a replica and close it on exit.

    Args:
      data_dir: a directory for the durable log engine, or ``None`` for the memory engine.
      fsync: the log engine's fsync policy (``always``, ``batch``, ``none``).
      limits: key, value and sibling limits.
      segment_bytes: the log engine's segment size.
      compact_below: the log engine compacts a sealed segment in the background once its live
        share drops below this (``0`` turns background compaction off; ``compact()`` still works).

    Raises:
      DataDirError: if the data dir cannot be used (a file, read-only, locked by another process).
      ConfigError: for a bad argument.
    """
    if data_dir is None:
        engine = MemoryEngine(limits=limits)
        try:
            yield engine
        finally:
            await engine.aclose()
        return
    async with open_log_engine(
        data_dir,
        fsync=fsync,
        limits=limits,
        segment_bytes=segment_bytes,
        compact_below=compact_below,
    ) as log:
        yield log
