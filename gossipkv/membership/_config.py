"""Membership tuning: :class:`GossipConfig`, one frozen value every room of the core reads.

Besides the settings, it holds the few quantities derived from them and the cluster's size: the
suspicion timeouts, how many rounds a peer gossips eagerly after learning something, and how many
buckets summarise a view. Each is a formula with its reason beside it, computed in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._partitions import DEFAULT_PARTITIONS, DEFAULT_REPLICAS


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Membership tuning. Durations are seconds of ``trio.current_time()``.

    Failure detection is SWIM's: every ``probe_interval`` a peer probes the next member of a
    shuffled round robin with a gossip exchange (and at once a member whose connection with it
    broke); when that fails, it tries again while ``indirect_probes`` other members try for it;
    when all fail, the member is suspect here. The suspicion stays local: it is re-probed every
    half interval, and once three re-probes failed too it becomes a down verdict after the
    suspicion timeout (``suspicion_mult`` probe intervals times ``max(1, log10 N)``: 1.5 s up to
    10 members, 3 s at 100) if every probe was refused at once (nothing listens there: a crash),
    or after four times that if probes only went unanswered (a slow or cut-off member). The
    verdict is published and every peer adopts it at once; a member that learns of a verdict
    about itself refutes it by writing a newer version of its namespace. With the defaults a
    crashed member of a 10-member cluster is down at every peer within about 2 seconds
    (simulated). A peer that finds itself slow stretches its probing (see ``_detector``).

    Gossip is eager only while there is news: a peer that learns or writes something gossips
    with ``fanout`` members every ``gossip_interval`` for about ``log2 N`` rounds, so news reaches
    everyone in O(log N) rounds; otherwise its only exchanges are its probes (anti-entropy too).

    Attributes:
      cluster: the cluster name (:class:`Node`'s ``cluster`` argument overrides it).
      gossip_interval: seconds between the eager gossip rounds that spread news.
      fanout: members gossiped with per eager round.
      probe_interval: seconds between failure-detection probes (each an exchange with the
        next member of the round robin, which also repairs any difference of views).
      probe_timeout: seconds one probe exchange waits for its answer. A crashed member refuses
        at once; this is how long a slow one (a saturated machine) is given, and then as long
        and half as much again for a second exchange and the indirect probes, together.
      indirect_probes: members asked to probe a member this peer could not reach (0: none).
      suspicion_mult: the suspicion timeout, in probe intervals, at 10 members or fewer (times
        ``log10 N`` above), for a member that refuses connections; one that only leaves probes
        unanswered is given four times as long.
      max_delta_bytes: the byte budget of one gossip delta (at least 1024).
      max_digest_bytes: the byte budget of the digest entries one gossip message lists (at
        least 256): in a reply, the entries of the buckets whose hashes differ, a rotating
        selection of them when they do not all fit. Spent only where views differ (a join
        storm: 4 KiB lets 200 joiners converge in about 10 rounds, 1 KiB in about 35).
      digest_buckets: the most bucket hashes a SYN summarises the view in (1..256); a peer
        uses about one bucket per eight members, and no more than ``max_digest_bytes`` allows.
      local_pause_threshold: event-loop lag, in seconds, that counts as this peer having been
        paused itself.
      pause_guard: seconds after such a pause in which no failure verdicts are passed.
      remove_after: seconds a member stays down or left before the leader removes it.
      leave_timeout: seconds a leaving member waits for the leader's acknowledgement.
      handoff_timeout: seconds a leaving member waits, by default, for its partitions and hints
        to be handed off before it gives up (and stays up) or, forced, leaves anyway.
      tombstone_ttl_ms: milliseconds a removal is remembered (its quarantine) before it is
        forgotten.
      max_generation_ahead: seconds a generation (a member's start time in wall-clock
        milliseconds) may lie ahead of this peer's wall clock. Gossip claiming a later one (a
        member, or a leader decision about one) is refused and counted: a removal at a generation
        far in the future would quarantine every later incarnation of a member. Members' clocks
        must agree within this bound.
      max_metadata_keys: metadata keys one member may publish.
      max_metadata_bytes: the largest metadata value, in UTF-8 bytes.
      partitions: partitions of the key space, fixed when the cluster's first table is made.
      replicas: N, the owners of each partition.
    """

    cluster: str = "gossipkv"
    gossip_interval: float = 0.2
    fanout: int = 2
    probe_interval: float = 0.75
    probe_timeout: float = 1.0
    indirect_probes: int = 3
    suspicion_mult: float = 2.0
    max_delta_bytes: int = 60 * 1024
    max_digest_bytes: int = 4096
    digest_buckets: int = 64
    local_pause_threshold: float = 1.0
    pause_guard: float = 2.0
    remove_after: float = 60.0
    leave_timeout: float = 5.0
    handoff_timeout: float = 120.0
    tombstone_ttl_ms: int = 24 * 3600 * 1000
    max_generation_ahead: float = 3600.0
    max_metadata_keys: int = 64
    max_metadata_bytes: int = 512
    partitions: int = DEFAULT_PARTITIONS  # fixed when the cluster is created (first table)
    replicas: int = DEFAULT_REPLICAS  # N: owners per partition

    def suspicion_timeouts(self, members: int) -> tuple[float, float]:
        """The suspicion timeouts of a cluster of ``members``: the short one (probes refused:
        nothing listens) is SWIM's (memberlist's) ``mult * interval * max(1, log10 N)``, the
        long one (probes unanswered: slow, or cut off) four times that.

        Args:
          members: the cluster's size as this peer sees it.
        """
        shortest = self.suspicion_mult * self.probe_interval * max(1.0, math.log10(members or 1))
        return shortest, 4 * shortest

    def eager_rounds(self, members: int) -> int:
        """Rounds a peer gossips eagerly after news: enough for an epidemic with this fanout
        to reach every member with high probability (``log2 N`` plus a margin).

        Args:
          members: the cluster's size as this peer sees it.
        """
        return max(3, math.ceil(math.log2(members + 1)) + 1)

    def syn_buckets(self, members: int) -> int:
        """Bucket hashes in a SYN: a power of two near ``members / 8`` (so a differing bucket
        lists about eight entries), at most ``digest_buckets`` and what ``max_digest_bytes``
        holds (a hash is at most 9 encoded bytes).

        Args:
          members: the cluster's size as this peer sees it.
        """
        cap = min(self.digest_buckets, max(1, self.max_digest_bytes // 9))
        cap = 1 << (cap.bit_length() - 1)
        wanted = max(1, members // 8)
        return min(cap, 1 << (wanted - 1).bit_length())

    def validate(self) -> None:
        """Check every setting (:class:`Node` does, and raises :exc:`ConfigError`).

        Raises:
          ValueError: naming the first bad setting.
        """
        positive = (
            "gossip_interval",
            "probe_interval",
            "probe_timeout",
            "suspicion_mult",
            "remove_after",
            "leave_timeout",
            "handoff_timeout",
            "max_generation_ahead",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {self.fanout}")
        if not 0 <= self.indirect_probes <= 16:
            raise ValueError(f"indirect_probes must be 0..16, got {self.indirect_probes}")
        if self.max_delta_bytes < 1024:
            raise ValueError("max_delta_bytes must be at least 1024")
        if self.max_digest_bytes < 256:
            raise ValueError("max_digest_bytes must be at least 256")
        if not 1 <= self.digest_buckets <= 256:
            raise ValueError(f"digest_buckets must be 1..256, got {self.digest_buckets}")
        if not self.cluster or len(self.cluster) > 128:
            raise ValueError("cluster name must be 1..128 characters")
        if not 1 <= self.partitions <= 4096:
            raise ValueError(f"partitions must be 1..4096, got {self.partitions}")
        if not 1 <= self.replicas <= 16:
            raise ValueError(f"replicas (N) must be 1..16, got {self.replicas}")
