"""The one place gossipkv reads wall-clock time (generations and the hybrid clock only)."""

from __future__ import annotations

import time


def wall_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return time.time_ns() // 1_000_000  # wall-clock ok
