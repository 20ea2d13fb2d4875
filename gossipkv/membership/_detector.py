"""Phi-accrual failure detection (HeartBeat), one arrival window per member.

phi is in Cassandra's units: ``phi = elapsed / mean_interval / ln(10)``, so a threshold of 8 means
a silence of about 18.4 mean heartbeat intervals, 5 about 11.5. The mean is smoothed with a prior
(``prior_mean`` weighted as ``prior_weight`` samples) so a member we barely know is neither
convicted early nor trusted blindly, and gaps above ``max_interval`` are not learned (a partition
must not teach the detector to be slow). Time is a parameter: this module never reads a clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

_LN10 = math.log(10.0)


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Tuning of the phi-accrual detector; thresholds are in Cassandra's log10 units."""

    window: int = 1000
    max_interval: float = 10.0
    prior_mean: float = 0.5
    prior_weight: int = 5
    suspect_phi: float = 5.0
    down_phi: float = 8.0


class ArrivalWindow:
    """Heartbeat arrival history of one member (one incarnation)."""

    __slots__ = ("_config", "_intervals", "_sum", "arrivals", "last_arrival")

    def __init__(self, config: DetectorConfig, now: float) -> None:
        self._config = config
        self._intervals: deque[float] = deque(maxlen=config.window)
        self._sum = 0.0
        # The first sighting counts as an arrival: a member heard of once and never again
        # must still be convicted eventually.
        self.last_arrival = now
        self.arrivals = 0

    def heartbeat(self, now: float) -> None:
        """Record that a newer heartbeat of this member was observed at ``now``."""
        interval = now - self.last_arrival
        if self.arrivals > 0 and 0.0 <= interval <= self._config.max_interval:
            if len(self._intervals) == self._intervals.maxlen:
                self._sum -= self._intervals[0]
            self._intervals.append(interval)
            self._sum += interval
        self.arrivals += 1
        self.last_arrival = now

    def rebase(self, now: float) -> None:
        """Start the silence count afresh at ``now`` without learning the gap (after a local stall)."""
        self.last_arrival = now
        self.arrivals = 0

    def mean(self) -> float:
        """Smoothed mean inter-arrival time."""
        c = self._config
        return (self._sum + c.prior_mean * c.prior_weight) / (len(self._intervals) + c.prior_weight)

    def phi(self, now: float) -> float:
        """Suspicion level at ``now`` (0 right after an arrival, growing with silence)."""
        elapsed = max(0.0, now - self.last_arrival)
        return elapsed / self.mean() / _LN10

    def sample_count(self) -> int:
        return len(self._intervals)
