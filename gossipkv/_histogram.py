"""Latency histograms with fixed buckets (sans-IO): what ``statistics()`` reports per operation,
what ``/metrics`` exposes as Prometheus histograms and what ``stats`` and the dashboard turn
into p50/p99.

Fixed bucket bounds mean a snapshot is a few integers, series never appear or vanish, and two
snapshots can be subtracted to get the latencies of an interval.
"""

from __future__ import annotations

import bisect
import math

#: Upper bounds of the buckets, in seconds (a last, unbounded bucket follows).
BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts of observed durations by bucket, their sum and their number."""

    __slots__ = ("count", "counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        """Record one duration (negative ones count as 0)."""
        seconds = max(0.0, seconds)
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def snapshot(self) -> dict[str, object]:
        """``{"buckets": [bounds], "counts": [per bucket, the last unbounded], "sum", "count"}``
        (plain data: it travels in ``statistics()`` and over the wire)."""
        return {
            "buckets": list(BUCKETS),
            "counts": list(self.counts),
            "sum": self.total,
            "count": self.count,
        }


def quantile(snapshot: dict[str, object], q: float) -> float | None:
    """The ``q`` quantile of a latency histogram from ``statistics().latency``.

    Args:
      snapshot: ``{"buckets", "counts", "sum", "count"}`` (one operation's histogram).
      q: between 0 and 1 (0.99 for p99).

    Returns:
      Seconds, interpolated within the bucket as Prometheus' ``histogram_quantile`` does, or
      ``None`` when nothing was observed (or the snapshot is malformed).
    """
    bounds = snapshot.get("buckets")
    counts = snapshot.get("counts")
    if not isinstance(bounds, list) or not isinstance(counts, list):
        return None
    total = sum(int(c) for c in counts)
    if total == 0 or len(counts) != len(bounds) + 1:
        return None
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if seen + int(c) >= rank and int(c) > 0:
            if i == len(bounds):
                return float(bounds[-1])  # the unbounded bucket: its lower bound
            lower = 0.0 if i == 0 else float(bounds[i - 1])
            upper = float(bounds[i])
            return lower + (upper - lower) * (rank - seen) / int(c)
        seen += int(c)
    return float(bounds[-1]) if bounds else math.nan
