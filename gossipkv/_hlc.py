"""Hybrid Logical Clock: physical milliseconds plus a logical counter, max-merged on messages.

HLC timestamps stamp events and values for display and GC age; they never decide causality
(version vectors do). Wall time is injected as a callable, so simulations can fake it.
A timestamp packs as ``ms << 16 | counter`` into one int for the wire.
"""

from __future__ import annotations

from collections.abc import Callable

_COUNTER_BITS = 16
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1


def pack(ms: int, counter: int) -> int:
    return (ms << _COUNTER_BITS) | counter


def unpack(stamp: int) -> tuple[int, int]:
    return stamp >> _COUNTER_BITS, stamp & _COUNTER_MASK


class HybridClock:
    """A monotonic HLC driven by an injected wall clock (milliseconds).

    Args:
      wall_ms: returns the current wall time in milliseconds.
      max_drift_ms: remote stamps further ahead than this are not merged (a peer with a broken
        clock must not drag ours into the future); the stamp is still accepted by the caller.
    """

    def __init__(self, wall_ms: Callable[[], int], *, max_drift_ms: int = 60_000) -> None:
        self._wall_ms = wall_ms
        self._max_drift_ms = max_drift_ms
        self._ms = 0
        self._counter = 0

    def now(self) -> int:
        """A new timestamp, greater than every one this clock returned or merged before."""
        wall = self._wall_ms()
        if wall > self._ms:
            self._ms, self._counter = wall, 0
        else:
            self._bump()
        return pack(self._ms, self._counter)

    def update(self, remote: int) -> int:
        """Merge a timestamp received from a peer; returns the new local timestamp."""
        r_ms, r_counter = unpack(remote)
        wall = self._wall_ms()
        if r_ms - wall > self._max_drift_ms:
            return self.now()
        if wall > self._ms and wall > r_ms:
            self._ms, self._counter = wall, 0
        elif r_ms > self._ms:
            self._ms, self._counter = r_ms, r_counter
            self._bump()
        elif r_ms == self._ms:
            self._counter = max(self._counter, r_counter)
            self._bump()
        else:
            self._bump()
        return pack(self._ms, self._counter)

    def _bump(self) -> None:
        if self._counter == _COUNTER_MASK:
            # Counter exhausted within one millisecond: borrow the next millisecond.
            self._ms += 1
            self._counter = 0
        else:
            self._counter += 1
