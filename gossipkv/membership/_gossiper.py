"""The sans-IO membership protocol: scuttlebutt gossip, liveness, statuses and leader duties.

:class:`Gossiper` owns one peer's whole membership view. The runtime feeds it messages and the
current time (``now`` from ``trio.current_time()``; ``wall_ms`` from the one wall-clock reader) and
sends what it returns; it never touches a socket, a clock or the global RNG, which is what lets
whole clusters run deterministically in one process.

Statuses: each member reports its own lifecycle (``joining -> up -> leaving -> left``) in its
namespace; reachability (``alive``/``suspect``/``down``) is this peer's local phi-accrual opinion;
``removed`` is the leader's decision, quarantined so stale gossip cannot resurrect an incarnation.
"""

from __future__ import annotations

import functools
import random
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

from .._messages import Ack, DigestEntry, NodeDelta, Shutdown, Syn, SynAck
from .._partitions import DEFAULT_PARTITIONS, DEFAULT_REPLICAS, PartitionTable, plan
from .._types import Address
from ._detector import ArrivalWindow, DetectorConfig
from ._leader import MAX_COUNTER, Age, Decisions, Grant, has_majority, view_hash
from ._state import (
    Namespace,
    ViewSummary,
    bucket_of,
    build_delta,
    digest_entry_size,
    wanted_digest,
)

#: Seconds between evaluations of the view and the leader's duties when nothing changed
#: (timeouts such as ``remove_after`` and ``leave_timeout`` are checked at this pace).
_FULL_EVALUATION = 1.0

Liveness = Literal["alive", "suspect", "down"]
SelfStatus = Literal["joining", "up", "leaving", "left"]
_SELF_STATUSES = ("joining", "up", "leaving", "left")
#: How far above a forged version of itself a member writes its own entries again.
_REFUTE_MARGIN = 1 << 16
META_PREFIX = "meta:"


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Membership tuning. Durations are seconds of ``trio.current_time()``.

    With the defaults (0.2 s rounds to two members, phi down at 7 in log10 units) a silent
    member is declared down after about 16 mean heartbeat intervals, i.e. roughly 3.5 s.

    Attributes:
      cluster: the cluster name (:class:`Node`'s ``cluster`` argument overrides it).
      gossip_interval: seconds between gossip rounds.
      fanout: live members gossiped with per round.
      max_delta_bytes: the byte budget of one gossip delta (at least 1024).
      max_digest_bytes: the byte budget of the digest entries one gossip message lists (at
        least 256): its heartbeat sample, and in a reply, the entries of the buckets whose
        hashes differ. With it, what a member sends per round does not grow with the cluster:
        above about ``max_digest_bytes / 22`` members a message carries a rotating sample of
        heartbeats rather than all of them.
      digest_buckets: members are summarised in this many bucket hashes per SYN (1..256).
      suspect_phi: phi at which a member is suspect (log10 units, as Cassandra).
      down_phi: phi at which a member is down.
      detector_window: heartbeat intervals the failure detector remembers per member.
      max_interval: longer heartbeat gaps are not learned (a partition must not teach the
        detector to be slow).
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
    max_delta_bytes: int = 60 * 1024
    max_digest_bytes: int = 1024
    digest_buckets: int = 16
    suspect_phi: float = 5.0
    down_phi: float = 7.0
    detector_window: int = 1000
    max_interval: float = 10.0
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

    def detector(self) -> DetectorConfig:
        """The phi-accrual detector settings these fields imply."""
        return DetectorConfig(
            window=self.detector_window,
            max_interval=self.max_interval,
            prior_mean=2 * self.gossip_interval,
            suspect_phi=self.suspect_phi,
            down_phi=self.down_phi,
        )

    def validate(self) -> None:
        """Check every setting (:class:`Node` does, and raises :exc:`ConfigError`).

        Raises:
          ValueError: naming the first bad setting.
        """
        positive = (
            "gossip_interval",
            "remove_after",
            "leave_timeout",
            "max_interval",
            "handoff_timeout",
            "max_generation_ahead",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.fanout < 1:
            raise ValueError(f"fanout must be >= 1, got {self.fanout}")
        if not 0 < self.suspect_phi <= self.down_phi:
            raise ValueError("need 0 < suspect_phi <= down_phi")
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


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of a peer's membership table, as the CLI and the API show it.

    Attributes:
      name: the member's name.
      address: the ``host:port`` it advertises (``None`` for a removed incarnation).
      status: ``joining``, ``up``, ``leaving``, ``left``, ``down`` (this peer's verdict) or
        ``removed`` (the leader's decision).
      reachable: whether this peer currently considers it alive.
      up_number: the order in which the leader admitted it (``None`` before that).
      age_rank: 1 for the oldest up member (the leader, when reachable), 2 for the next, ...
      generation: the incarnation's generation.
      heartbeat: the newest heartbeat this peer has seen from it.
      phi: this peer's suspicion level (``None`` for the peer itself).
      metadata: what the member published with ``set_metadata``.
      is_leader: whether this peer sees it as the leader.
      is_self: whether it is the peer whose table this is.
    """

    name: str
    address: str | None
    status: str  # joining | up | leaving | left | down | removed
    reachable: bool
    up_number: int | None
    age_rank: int | None
    generation: int
    heartbeat: int
    phi: float | None
    metadata: dict[str, str]
    is_leader: bool
    is_self: bool


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """Something that happened to a member, as this peer saw it.

    Attributes:
      at: ``trio.current_time()`` when this peer noticed it.
      kind: ``joined``, ``up``, ``suspect``, ``down``, ``alive``, ``leaving``, ``left``,
        ``removed``, ``restarted`` or ``leader`` (a new leader, named by ``node_id``; ``""``
        when there is none).
      node_id: the member it happened to.
      generation: that member's generation (0 for ``leader``).
      detail: a human-readable note, such as ``"phi 8.3"``.
    """

    at: float
    kind: str  # joined|up|suspect|down|alive|leaving|left|removed|restarted|leader
    node_id: str
    generation: int
    detail: str = ""


@dataclass(slots=True)
class _Peer:
    """What this peer alone knows about a remote member (never gossiped)."""

    window: ArrivalWindow
    liveness: Liveness = "alive"
    down_since: float | None = None
    left_since: float | None = None
    shutdown_noticed: bool = False


@dataclass(slots=True)
class GossipCounters:
    rounds: int = 0
    syns_received: int = 0
    deltas_applied: int = 0
    stale_ignored: int = 0
    quarantined: int = 0
    identity_conflicts: int = 0
    bad_values: int = 0
    budget_truncations: int = 0
    pause_guards: int = 0
    #: Gossip refused because no honest member could have sent it, by reason (see
    #: :meth:`Decisions.vet`, plus ``generation_ahead`` for a member's own entry,
    #: ``shutdown_not_own`` for a shutdown notice sent for another member, and ``forged_self``
    #: for entries of this incarnation that it never wrote).
    refused: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _LeaderState:
    converged_view: frozenset[str] = field(default_factory=frozenset)
    was_leader: bool = False


class Gossiper:
    """One peer's membership state machine.

    Args:
      config: tuning.
      node_id: this peer's stable name.
      address: the ``host:port`` others reach it at.
      generation: this incarnation's generation (Generation Clock).
      seeds: addresses to contact when joining and to keep gossiping with so partitions heal.
      now: current ``trio.current_time()``.
      decisions: the leader decisions persisted by an earlier incarnation, if any.
      bootstrap: start a new cluster (grant ourselves the first ``up_number``) instead of joining.
      replaces: the dead member this new one takes over (``gossipkv peer --replace``): it holds
        exactly that member's partitions and is admitted once it has filled them.
    """

    def __init__(
        self,
        config: GossipConfig,
        *,
        node_id: str,
        address: str,
        generation: int,
        seeds: list[str],
        now: float,
        decisions: Decisions | None = None,
        bootstrap: bool = False,
        replaces: str | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self._detector = config.detector()
        self.node_id = node_id
        self.address = address
        self.seeds = [s for s in dict.fromkeys(seeds) if s != address]
        self.decisions = decisions if decisions is not None else Decisions()
        self.counters = GossipCounters()
        self.events: deque[MembershipEvent] = deque(maxlen=1024)
        self.decisions_dirty = False
        self.needs_reincarnation = False
        self._peers: dict[str, _Peer] = {}
        self._namespaces: dict[str, Namespace] = {}
        #: Bucket hashes of the view, kept current as namespaces change.
        self._summary = ViewSummary()
        #: ``(changes, live, down)``: gossip targets as of that many changes (see ``tick``).
        self._targets: tuple[int, list[str], list[str]] | None = None
        #: ``((changes, own version), value)``: the cluster's reaped_upto as of then.
        self._reaped: tuple[tuple[int, int], int] | None = None
        #: The other members' names, sorted (``None``: to be recomputed after a change).
        self._others: list[str] | None = None
        #: Bumped by every event and every entry learned: evaluations in between skip the work
        #: that only such a change (or time, see ``_FULL_EVALUATION``) can make necessary.
        self._changes = 0
        self._evaluated: tuple[int, int, tuple[int, int]] | None = None
        self._next_full_evaluation = now
        #: The bucket count of the summary in this peer's SYNs (the replies refer to it).
        self._syn_buckets = 1
        #: Where the next heartbeat sample starts in the sorted member names.
        self._sample_at = 0
        self._leader = _LeaderState()
        self._last_eval = now
        self._guard_until = now
        self._leave_deadline: float | None = None
        self._left_at: float | None = None
        self._started = now
        self._last_leader: str | None = None
        self.generation = generation
        #: This peer's wall clock at the last evaluation (generations are wall-clock ms).
        self._wall_ms = generation
        #: Refusals of forged-looking gossip since the runtime last looked: ``(reason, detail)``.
        self.refusal_notes: deque[tuple[str, str]] = deque(maxlen=64)
        self._self = self._new_self(generation)
        self.replaces: str | None = None
        #: Set by the runtime while a leaving member's partitions and hints are handed off: it
        #: stays ``leaving`` (serving as a source) until they are.
        self.hold_leave = False
        grant = self.decisions.admission(node_id)
        if grant is not None:
            self._resume(grant)
        elif bootstrap:
            self._bootstrap()
        elif replaces is not None:
            self.replaces = replaces
            self._self.set("replaces", replaces)

    # --- identity -------------------------------------------------------------------------------

    def _new_self(self, generation: int) -> Namespace:
        ns = Namespace(self.node_id, generation)
        self._add_namespace(ns)
        ns.set("addr", self.address)
        ns.set("status", "joining")
        ns.set("up", 0)
        return ns

    def _add_namespace(self, ns: Namespace) -> None:
        """Hold ``ns`` as what is known of its member (replacing any older incarnation)."""
        self._namespaces[ns.node_id] = ns
        ns.watcher = self._summary
        self._summary.update(ns.node_id, ns.generation, ns.max_version)
        self._others = None

    def _drop_namespace(self, node_id: str) -> None:
        del self._namespaces[node_id]
        self._summary.drop(node_id)
        self._others = None

    def _bootstrap(self) -> None:
        self.decisions.begin_term()
        up = self.decisions.max_up_number() + 1
        term, seq = self.decisions.next_epoch()
        self.decisions.grants[self.node_id] = Grant(self.generation, up, term, seq)
        self.decisions_dirty = True
        self._leader.was_leader = True
        self._self.set("decisions", self.decisions.to_plain())
        self._promote_self(up, self.generation)

    def _resume(self, grant: Grant) -> None:
        """Continue as the member an earlier incarnation was (restarted with its data dir): up at
        once with the same ``up_number``, so the leader and the partition table stay where they
        were, and nobody has to admit anybody after a whole-cluster restart. The new generation
        supersedes the old incarnation's ghosts. Until this peer has heard from a majority of the
        members it remembers, it makes no topology decision (see :meth:`_track_view`)."""
        self._self.set("decisions", self.decisions.to_plain())
        self._leader.converged_view = frozenset(self.decisions.admitted())
        self._promote_self(grant.up_number, grant.generation)

    def next_generation(self, wall_ms: int) -> int:
        """The generation to rejoin with after a removal: above this incarnation and above the
        removed one (one rejoin, not one per removed generation), else the wall clock."""
        removed = self.decisions.removed.get(self.node_id, (0, 0))[0]
        return max(self.generation + 1, removed + 1, wall_ms)

    def reincarnate(self, generation: int, now: float) -> None:
        """Continue as a new incarnation (after this one was removed): rejoin as ``joining``."""
        metadata = {k: v for k, (v, _) in self._self.entries.items() if k.startswith(META_PREFIX)}
        self.generation = generation
        self._self = self._new_self(generation)
        for key, value in metadata.items():
            self._self.set(key, value)
        self.needs_reincarnation = False
        self._event(now, "restarted", self.node_id, generation, "rejoining after removal")

    @property
    def status(self) -> SelfStatus:
        return _status_of(self._self)

    @property
    def removed(self) -> bool:
        """Whether the leader removed this incarnation (or the admission it resumed)."""
        return self._voided(self.node_id, self._self)

    @property
    def resumed(self) -> bool:
        """Whether this incarnation resumed an admission of an earlier one (a restart)."""
        admitted = _admitted_of(self._self)
        return admitted is not None and admitted < self.generation

    @property
    def up_number(self) -> int:
        return _up_of(self._self)

    @property
    def has_left(self) -> bool:
        """True once this peer's leave is complete and it may shut down."""
        return self.status == "left"

    # --- gossip rounds ---------------------------------------------------------------------------

    def digest(self) -> tuple[DigestEntry, ...]:
        """Every member's digest entry (sorted by name)."""
        return tuple(ns.digest() for _, ns in sorted(self._namespaces.items()))

    def heartbeat_sample(self) -> tuple[DigestEntry, ...]:
        """This peer's own entry, then the next members in name order (rotating from one call to
        the next) as far as ``max_digest_bytes`` allows: in a small cluster, everyone."""
        own = self._self.digest()
        out = [own]
        left = self.config.max_digest_bytes - digest_entry_size(own)
        others = self._others
        if others is None:
            others = self._others = sorted(n for n in self._namespaces if n != self.node_id)
        count = len(others)
        start = self._sample_at % count if count else 0
        taken = 0
        for i in range(count):
            entry = self._namespaces[others[(start + i) % count]].digest()
            size = digest_entry_size(entry)
            if size > left:
                break
            left -= size
            out.append(entry)
            taken += 1
        self._sample_at = start + taken
        return tuple(out)

    def view_buckets(self, buckets: int | None = None) -> tuple[int, ...]:
        """The bucket hashes summarising every member's generation and newest version."""
        return self._summary.buckets(buckets or self.config.digest_buckets)

    def _gossip_targets(self) -> tuple[list[str], list[str]]:
        """Addresses of the live and of the down members (sorted), recomputed after a change."""
        cached = self._targets
        if cached is not None and cached[0] == self._changes:
            return cached[1], cached[2]
        live: list[str] = []
        down: list[str] = []
        for node_id, ns in self._namespaces.items():
            if node_id == self.node_id:
                continue
            addr = _addr_of(ns)
            peer = self._peers.get(node_id)
            if addr is None or peer is None or _status_of(ns) == "left" or peer.shutdown_noticed:
                continue
            (down if peer.liveness == "down" else live).append(addr)
        live.sort()
        down.sort()
        self._targets = (self._changes, live, down)
        return live, down

    def tick(self, now: float, rng: random.Random) -> list[tuple[str, Syn]]:
        """Start a gossip round: bump the heartbeat and pick targets.

        Returns:
          ``(address, Syn)`` pairs to send: ``fanout`` live peers, maybe one down peer, and a seed
          when none was picked (so partitions heal).
        """
        self.counters.rounds += 1
        self._self.heartbeat += 1
        live, down = self._gossip_targets()
        targets = rng.sample(live, min(self.config.fanout, len(live)))
        if down and rng.random() < len(down) / (len(live) + 1):
            targets.append(rng.choice(down))
        # A seed not among the live members (never heard from, or known only as down): after a
        # restart the remembered members are all seeds, and a group that found only some of
        # them must keep trying the rest, or it stays a group apart.
        live_set = set(live)
        unreached = [s for s in self.seeds if s not in live_set and s not in targets]
        if unreached and len(unreached) == len([s for s in self.seeds if s not in targets]):
            if len(live) < len(self.seeds) or rng.random() < len(self.seeds) / (
                len(live) + len(down) + 1
            ):
                targets.append(rng.choice(unreached))
        elif unreached and rng.random() < len(unreached) / (len(live) + len(unreached) + 1):
            targets.append(rng.choice(unreached))
        # About eight members a bucket, up to ``digest_buckets``: a small cluster's summary
        # stays smaller than its digest would be.
        wanted = max(1, len(self._namespaces) // 8)
        self._syn_buckets = min(self.config.digest_buckets, 1 << (wanted - 1).bit_length())
        syn = Syn(
            self.node_id,
            self.generation,
            self.heartbeat_sample(),
            view=self.view_buckets(self._syn_buckets),
        )
        return [(addr, syn) for addr in dict.fromkeys(targets)]

    def on_syn(self, syn: Syn, now: float) -> SynAck:
        """Answer a round: list our entries of the buckets whose hashes differ (the sender then
        pushes what we lack and asks for what it lacks), our heartbeat sample, and what the
        sender's sample shows it lacks."""
        self.counters.syns_received += 1
        theirs = self._filter_digest(syn.digest, now)
        count = len(syn.view)
        mine = self.view_buckets(count) if 0 < count <= 256 else ()
        differ = [b for b in range(len(mine)) if mine[b] != syn.view[b]]
        if count and not mine:
            differ = []  # a malformed view: answer the sample only
        # Our sample, less what the sender's own sample shows it knows as well as we do.
        listed: list[DigestEntry] = [
            e
            for e in self.heartbeat_sample()
            if (t := theirs.get(e.node_id)) is None
            or t.generation != e.generation
            or t.heartbeat < e.heartbeat
            or t.max_version < e.max_version
        ]
        covered: list[int] = []
        if differ:
            by_bucket: dict[int, list[DigestEntry]] = {b: [] for b in differ}
            for node_id, ns in self._namespaces.items():
                entries = by_bucket.get(bucket_of(node_id, count))
                if entries is not None:
                    entries.append(ns.digest())
            left = self.config.max_digest_bytes
            # Start where the sample left off, so a budget too small for every differing
            # bucket still covers each of them in turn.
            first = self._sample_at % len(differ)
            for b in differ[first:] + differ[:first]:
                entries = by_bucket[b]
                size = sum(digest_entry_size(e) for e in entries)
                if size > left:
                    continue
                left -= size
                covered.append(b)
                listed.extend(entries)
            if len(covered) < len(differ):
                self.counters.budget_truncations += 1
        budget = self.config.max_delta_bytes - 16
        lacking = {
            n: e
            for n, e in theirs.items()
            if (have := self._namespaces.get(n)) is not None
            and (
                e.generation < have.generation
                or (e.generation == have.generation and e.max_version < have.max_version)
            )
        }
        delta = (
            build_delta({n: self._namespaces[n] for n in lacking}, lacking, budget)
            if lacking
            else ()
        )
        return SynAck(tuple(listed), delta, tuple(sorted(covered)))

    def on_syn_ack(self, msg: SynAck, now: float) -> Ack:
        """Apply the reply's delta; push what the replier lacks in the buckets it listed, and ask
        for what it knows better."""
        self.apply_delta(msg.delta, now)
        theirs = self._filter_digest(msg.digest, now)
        count = self._syn_buckets
        covered = {b for b in msg.buckets if 0 <= b < count}
        # In a covered bucket the replier listed every member it knows; elsewhere only the
        # sample's members can be compared.
        mine = {
            n: ns
            for n, ns in self._namespaces.items()
            if n in theirs or (covered and bucket_of(n, count) in covered)
        }
        delta = build_delta(mine, theirs, self.config.max_delta_bytes - 16)
        self._note_truncation(delta, mine, theirs)
        wanted = wanted_digest(self._namespaces, theirs.values())
        return Ack(delta, wanted[: self._max_entries()])

    def on_ack(self, msg: Ack, now: float) -> Ack | None:
        """Apply an Ack's delta; answer what it asked for (``None``: it asked for nothing)."""
        self.apply_delta(msg.delta, now)
        if not msg.wanted:
            return None
        theirs = {
            e.node_id: e
            for e in msg.wanted[: self._max_entries()]
            if not self.decisions.is_removed(e.node_id, e.generation)
        }
        mine = {n: ns for n, ns in self._namespaces.items() if n in theirs}
        delta = build_delta(mine, theirs, self.config.max_delta_bytes - 16)
        self._note_truncation(delta, mine, theirs)
        return Ack(delta) if delta else None

    def _max_entries(self) -> int:
        # The most digest entries one message may ask with (the smallest entry is 8 bytes).
        return self.config.max_digest_bytes // 8

    def on_shutdown(self, msg: Shutdown, now: float, *, sender: str) -> None:
        """A member announced it is stopping now: stop waiting for the detector.

        Only the member itself may say so, on its own connection (``sender`` is the name the
        connection proved: its TLS certificate, or without TLS its hello).
        """
        if sender != msg.node_id:
            self._refuse("shutdown_not_own", f"{sender} announced that {msg.node_id} stops")
            return
        ns = self._namespaces.get(msg.node_id)
        peer = self._peers.get(msg.node_id)
        if ns is None or peer is None or ns.generation != msg.generation:
            return
        if not peer.shutdown_noticed:
            peer.shutdown_noticed = True
            peer.liveness = "down"
            peer.down_since = now
            if peer.left_since is None:
                peer.left_since = now
            self._event(now, "left", msg.node_id, msg.generation, "shutdown notice")

    def _note_truncation(
        self,
        delta: tuple[NodeDelta, ...],
        mine: dict[str, Namespace],
        theirs: dict[str, DigestEntry],
    ) -> None:
        # Count exchanges where the budget kept back something the other side lacks (the next
        # round continues).
        lacking = sum(
            1
            for node_id, ns in mine.items()
            if (e := theirs.get(node_id)) is None
            or e.generation < ns.generation
            or (e.generation == ns.generation and e.max_version < ns.max_version)
        )
        complete = sum(
            1 for nd in delta if nd.max_version >= self._namespaces[nd.node_id].max_version
        )
        if complete < lacking:
            self.counters.budget_truncations += 1

    def _filter_digest(self, digest: tuple[DigestEntry, ...], now: float) -> dict[str, DigestEntry]:
        """Index a received digest, feeding newer heartbeats to the detector."""
        out: dict[str, DigestEntry] = {}
        for entry in digest:
            if self.decisions.is_removed(entry.node_id, entry.generation):
                continue
            out[entry.node_id] = entry
            if entry.node_id == self.node_id and entry.generation == self.generation:
                self._refute(entry.max_version, entry.heartbeat)
            ns = self._namespaces.get(entry.node_id)
            if (
                ns is not None
                and entry.node_id != self.node_id
                and ns.generation == entry.generation
                and entry.heartbeat > ns.heartbeat
            ):
                ns.heartbeat = entry.heartbeat
                self._heard(entry.node_id, now)
        return out

    # --- applying deltas -------------------------------------------------------------------------

    def apply_delta(self, delta: tuple[NodeDelta, ...], now: float) -> None:
        for nd in delta:
            self._apply_node_delta(nd, now)

    def _apply_node_delta(self, nd: NodeDelta, now: float) -> None:
        if nd.node_id == self.node_id:
            if nd.generation > self.generation:
                # Someone else runs under our name with a newer generation.
                self.counters.identity_conflicts += 1
            elif nd.generation == self.generation:
                self._refute(nd.max_version, nd.heartbeat)
            return
        if nd.generation > self._max_generation():
            self._refuse("generation_ahead", f"{nd.node_id} at generation {nd.generation}")
            return
        if self.decisions.is_removed(nd.node_id, nd.generation):
            self.counters.quarantined += 1
            # Its decisions are still facts: merging them lets a mutual removal resolve itself.
            for entry in nd.entries:
                if entry.key == "decisions":
                    self._merge_decisions(entry.value)
            return
        ns = self._namespaces.get(nd.node_id)
        if ns is None or nd.generation > ns.generation:
            if nd.floor != 0:
                self.counters.stale_ignored += 1
                return
            restarted = ns is not None
            ns = Namespace(nd.node_id, nd.generation)
            self._add_namespace(ns)
            # A new incarnation replaces the old one completely, detector history included.
            self._peers[nd.node_id] = _Peer(ArrivalWindow(self._detector, now))
            self._event(
                now,
                "restarted" if restarted else "joined",
                nd.node_id,
                nd.generation,
            )
        elif nd.generation < ns.generation:
            self.counters.stale_ignored += 1
            return
        before_status, before_up = _status_of(ns), _up_of(ns)
        if nd.floor <= ns.max_version:
            for entry in nd.entries:
                item = ns.entries.get(entry.key)
                if item is None or entry.version > item[1]:
                    ns.put(entry.key, entry.value, entry.version)
                    self._changes += 1
                    if entry.key == "decisions":
                        self._merge_decisions(entry.value)
            ns.raise_max(nd.max_version)
            self.counters.deltas_applied += 1
        else:
            self.counters.stale_ignored += 1
        if nd.heartbeat > ns.heartbeat:
            ns.heartbeat = nd.heartbeat
            self._heard(nd.node_id, now)
        after_status = _status_of(ns)
        if after_status != before_status:
            peer = self._peers[nd.node_id]
            if after_status == "left" and peer.left_since is None:
                peer.left_since = now
            self._event(now, after_status, nd.node_id, ns.generation)
        elif _up_of(ns) != before_up and after_status == "up":
            self._event(now, "up", nd.node_id, ns.generation)

    def _refute(self, max_version: int, heartbeat: int) -> None:
        """Gossip about this incarnation that this peer never wrote (a higher version or
        heartbeat) is a forgery: its entries could mark us left or silence our heartbeat at every
        peer that took them. Refuse it, and outbid it the way SWIM refutes a suspicion: every
        entry of ours is written again above the forged version, so the truth spreads and wins.
        """
        own = self._self
        if max_version <= own.max_version and heartbeat <= own.heartbeat:
            return
        self._refuse(
            "forged_self", f"our incarnation at version {max_version}, heartbeat {heartbeat}"
        )
        own.heartbeat = max(own.heartbeat, heartbeat) + 1
        # Far above the claim: the first claim seen need not be the highest forged (one peer may
        # hold version 16 while another reports 11), and an entry forged at a version this peer
        # later reaches by its own writes would never be replaced.
        top = max(own.max_version, max_version) + _REFUTE_MARGIN
        for key, (value, _) in sorted(own.entries.items(), key=lambda item: item[1][1]):
            top += 1
            own.put(key, value, top)

    def _merge_decisions(self, raw: object) -> None:
        other = Decisions.from_plain(raw)
        if other is None:
            self.counters.bad_values += 1
            return
        reasons = self.decisions.vet(
            other, max_generation=self._max_generation(), seen=self._seen_generations()
        )
        for reason in reasons:
            self._refuse(reason, f"in a decisions record of epoch {other.epoch()}")
        if self.decisions.merge(other):
            self.decisions_dirty = True

    def _max_generation(self) -> int:
        return self._wall_ms + int(self.config.max_generation_ahead * 1000)

    def _seen_generations(self) -> dict[str, int]:
        seen = {n: g.generation for n, g in self.decisions.grants.items()}
        for node_id, ns in self._namespaces.items():
            seen[node_id] = max(seen.get(node_id, -1), ns.generation)
        return seen

    def _refuse(self, reason: str, detail: str) -> None:
        self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1
        self.refusal_notes.append((reason, detail))

    def _heard(self, node_id: str, now: float) -> None:
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.window.heartbeat(now)

    # --- local operations ------------------------------------------------------------------------

    def set_metadata(self, key: str, value: str | None) -> None:
        """Set (or with ``None`` delete) a user metadata key, visible at every peer.

        Raises:
          ValueError: key or value too long, or too many keys.
        """
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise ValueError("metadata key must be a non-empty string of at most 128 characters")
        if value is not None:
            if not isinstance(value, str):
                raise ValueError("metadata value must be a string or None")
            if len(value.encode()) > self.config.max_metadata_bytes:
                raise ValueError(f"metadata value exceeds {self.config.max_metadata_bytes} bytes")
            present = sum(
                1
                for k, (v, _) in self._self.entries.items()
                if k.startswith(META_PREFIX) and v is not None
            )
            if (
                self._self.get(META_PREFIX + key) is None
                and present >= self.config.max_metadata_keys
            ):
                raise ValueError(f"at most {self.config.max_metadata_keys} metadata keys")
        self._self.set(META_PREFIX + key, value)

    def start_leave(self, now: float) -> None:
        """Begin a graceful leave: announce ``leaving`` and wait for the leader's acknowledgement."""
        if self.status in ("leaving", "left"):
            return
        if self.status == "joining":
            self._set_left(now)
            return
        self._self.set("status", "leaving")
        self._leave_deadline = now + self.config.leave_timeout
        self._event(now, "leaving", self.node_id, self.generation)

    def _set_left(self, now: float) -> None:
        self._self.set("status", "left")
        self._left_at = now
        self._event(now, "left", self.node_id, self.generation)

    def operator_remove(self, node_id: str, now: float, wall_ms: int) -> tuple[int, bool]:
        """Remove ``node_id`` on an operator's word (``gossipkv remove``): its incarnation is
        removed and its partitions go to the members that remain, at once.

        The operator's word stands in for the majority the leader otherwise needs: with 2 of 5
        members left, the 3 dead ones can still be removed. It is refused while this peer (the
        leader) can reach the member, which must be stopped or declared dead first.

        Returns:
          The removed generation, and whether the survivors were short of a majority.

        Raises:
          ValueError: this peer is not the leader, the member is this peer or unknown, or it
            is reachable and not leaving.
        """
        if node_id in self.decisions.removed and self.decisions.admission(node_id) is None:
            if node_id not in self._namespaces and self.leader() == self.node_id:
                return self.decisions.removed[node_id][0], False  # removed already
        generation = self._removable(node_id)
        minority = not self._has_majority()
        self._remove_now(node_id, generation, now, wall_ms)
        return generation, minority

    def _removable(self, node_id: str) -> int:
        """The generation to remove of a member an operator declares dead.

        Raises:
          ValueError: as :meth:`operator_remove`.
        """
        if node_id == self.node_id:
            raise ValueError("a member cannot remove itself: use gossipkv leave")
        if self.leader() != self.node_id:
            raise ValueError(f"only the leader can remove members (the leader is {self.leader()})")
        ns = self._namespaces.get(node_id)
        grant = self.decisions.admission(node_id)
        if ns is None and grant is None:
            raise ValueError(f"no member named {node_id!r}")
        peer = self._peers.get(node_id)
        if ns is not None and peer is not None and peer.liveness != "down" and not _gone(peer, ns):
            raise ValueError(
                f"{node_id} is reachable and {_status_of(ns)}: stop it first (or use leave)"
            )
        return max(ns.generation if ns is not None else 0, grant.generation if grant else 0)

    def _remove_now(self, node_id: str, generation: int, now: float, wall_ms: int) -> None:
        d = self.decisions
        d.next_epoch()
        d.removed[node_id] = (generation, wall_ms)
        self._apply_decisions(now)
        # The members in reach are the new whole: later decisions count a majority of them.
        self._leader.converged_view = frozenset(self.reachable_members())
        self._plan_partitions()
        self.decisions_dirty = True
        self._self.set("decisions", d.to_plain())

    def operator_replace(
        self, replaced: str, replacement: str, generation: int, now: float, wall_ms: int
    ) -> bool:
        """Hand every partition of dead member ``replaced`` to the new member ``replacement``
        (``gossipkv peer --replace``), moving no other partition: ``replaced`` is removed and
        ``replacement`` takes its place in every preference list. ``replacement`` is admitted
        (up, serving reads) only once it has filled those partitions from the other owners;
        until then reads go to them and its writes are hinted. Like an operator removal this
        needs no majority. Asking again (a replacement that restarted) changes nothing.

        Returns:
          Whether it was done now (False: it had been done already).

        Raises:
          ValueError: this peer is not the leader; ``replaced`` is unknown, this peer, or
            reachable and up; ``replacement`` is already a member.
        """
        d = self.decisions
        if self.leader() != self.node_id:
            raise ValueError(f"only the leader can replace members (the leader is {self.leader()})")
        if d.replacing.get(replacement, ("", -1))[0] == replaced and replaced in d.removed:
            d.replacing[replacement] = (replaced, max(generation, d.replacing[replacement][1]))
            self.decisions_dirty = True
            return False
        known = self._namespaces.get(replacement)
        if d.admission(replacement) is not None or (
            known is not None and _status_of(known) != "joining"
        ):
            raise ValueError(f"{replacement} is already a member; it cannot replace {replaced}")
        removed_generation = self._removable(replaced)
        d.replacing[replacement] = (replaced, generation)
        table = self.table()
        if table is not None:
            # The replacement takes the replaced member's place in every preference list.
            owners = tuple(
                tuple(replacement if o == replaced else o for o in row) for row in table.owners
            )
            term, seq = d.next_epoch()
            d.table = PartitionTable(term, seq, table.n, owners)
        self._remove_now(replaced, removed_generation, now, wall_ms)
        return True

    def is_gone(self, node_id: str) -> bool:
        """Whether ``node_id`` will not serve again: removed (and not admitted again), or it
        left (its decommission finished)."""
        if node_id in self.decisions.removed and self.decisions.admission(node_id) is None:
            return True
        ns = self._namespaces.get(node_id)
        return ns is not None and node_id != self.node_id and _gone(self._peers.get(node_id), ns)

    def set_pulling(self, partitions: list[int]) -> None:
        """Publish the partitions this member is still pulling (a transfer in flight), so every
        peer can tell which partitions have fewer than N full copies."""
        if self._self.get("pulling") != partitions:
            self._self.set("pulling", partitions)

    def set_reaped_upto(self, wall_ms: int) -> None:
        """Publish the write time of the newest tombstone this member reaped (wall-clock ms):
        a member back from a longer absence wipes its replica if anyone reaped a tombstone
        written after it was last alive (see ``gossipkv._reaper``)."""
        if wall_ms > 0 and self._self.get("reaped_upto") != wall_ms:
            self._self.set("reaped_upto", wall_ms)

    def reaped_upto(self) -> int:
        """The newest tombstone write time any known member published as reaped (0: none)."""
        cached = self._reaped
        stamp = (self._changes, self._self.max_version)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        out = 0
        for ns in self._namespaces.values():
            value = ns.get("reaped_upto")
            if type(value) is int and value > out:
                out = value
        self._reaped = (stamp, out)
        return out

    def pulling(self, partition: int) -> set[str]:
        """The members still pulling ``partition`` (a transfer into them is in flight)."""
        out = set()
        for node_id, ns in self._namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list) and partition in value:
                out.add(node_id)
        return out

    def under_replicated(self) -> int:
        """Partitions with an owner that is unreachable from here or still pulling them."""
        table = self.table()
        if table is None:
            return 0
        reachable = self.reachable_members()
        pulling: dict[str, set[int]] = {}
        for node_id, ns in self._namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list):
                pulling[node_id] = {p for p in value if isinstance(p, int)}
        return sum(
            1
            for p, row in enumerate(table.owners)
            if len(row) < table.n or any(o not in reachable or p in pulling.get(o, ()) for o in row)
        )

    def mark_filled(self) -> None:
        """This replacement has filled every partition it took over: the leader may admit it."""
        if self._self.get("filled") is not True:
            self._self.set("filled", True)

    def note_loop_lag(self, lag: float, now: float) -> None:
        """Report an event-loop stall measured by the runtime's watchdog."""
        if lag > self.config.local_pause_threshold:
            self._pause_guard(now)

    def _pause_guard(self, now: float) -> None:
        # A stalled observer sees everyone as silent: suppress verdicts for a while and start every
        # silence count afresh instead of learning the stall as a heartbeat interval.
        self.counters.pause_guards += 1
        self._guard_until = now + self.config.pause_guard
        for peer in self._peers.values():
            peer.window.rebase(now)

    # --- periodic evaluation ---------------------------------------------------------------------

    def evaluate(self, now: float, wall_ms: int) -> None:
        """Update liveness, own status and, when leader, make decisions."""
        if now - self._last_eval > self.config.local_pause_threshold:
            self._pause_guard(now)
        self._last_eval = now
        self._wall_ms = max(self._wall_ms, wall_ms)
        self._evaluate_liveness(now)
        if self._stamp() == self._evaluated and now < self._next_full_evaluation:
            return  # nothing changed: the view, the leader and its duties are as they were
        self._next_full_evaluation = now + _FULL_EVALUATION
        self._apply_decisions(now)
        self._evaluate_self(now)
        self._publish_view()
        self._track_view()
        self._leader_duties(now, wall_ms)
        self._evaluated = self._stamp()

    def _stamp(self) -> tuple[int, int, tuple[int, int]]:
        return (self._changes, self._self.max_version, self.decisions.epoch())

    def _evaluate_liveness(self, now: float) -> None:
        guarded = now < self._guard_until
        for node_id, peer in self._peers.items():
            ns = self._namespaces[node_id]
            if _status_of(ns) == "left" or peer.shutdown_noticed:
                continue
            phi = peer.window.phi(now)
            if phi >= self.config.down_phi:
                if peer.liveness != "down" and not guarded:
                    peer.liveness = "down"
                    peer.down_since = now
                    self._event(now, "down", node_id, ns.generation, f"phi {phi:.1f}")
            elif phi >= self.config.suspect_phi:
                if peer.liveness == "alive":
                    peer.liveness = "suspect"
                    self._event(now, "suspect", node_id, ns.generation, f"phi {phi:.1f}")
            elif peer.liveness != "alive":
                peer.liveness = "alive"
                peer.down_since = None
                self._event(now, "alive", node_id, ns.generation)

    def _apply_decisions(self, now: float) -> None:
        for node_id, ns in list(self._namespaces.items()):
            if node_id != self.node_id and self._voided(node_id, ns):
                self._drop_namespace(node_id)
                del self._peers[node_id]
                self._event(now, "removed", node_id, ns.generation)

    def _voided(self, node_id: str, ns: Namespace) -> bool:
        """Removed: this incarnation, or the admission it resumed after a restart (a member
        removed while it was away must rejoin as a new member, not come back as its old age)."""
        admitted = _admitted_of(ns)
        return self.decisions.is_removed(node_id, ns.generation) or (
            admitted is not None and self.decisions.is_removed(node_id, admitted)
        )

    def _evaluate_self(self, now: float) -> None:
        status = self.status
        if self._voided(self.node_id, self._self) and status != "left":
            if status == "leaving":
                self._set_left(now)  # going anyway: no point rejoining
            else:
                self.needs_reincarnation = True
            return
        if status == "joining":
            grant = self.decisions.grants.get(self.node_id)
            if grant is not None and grant.generation == self.generation:
                self._promote_self(grant.up_number, grant.generation)
                self._event(
                    now, "up", self.node_id, self.generation, f"up_number {grant.up_number}"
                )
        elif status == "leaving":
            done = self.decisions.exited.get(self.node_id) == self.generation
            expired = self._leave_deadline is not None and now >= self._leave_deadline
            # The runtime holds the leave while this member's data is still being handed off.
            if (done or expired) and not self.hold_leave:
                self._set_left(now)

    def _promote_self(self, up_number: int, admitted: int) -> None:
        self._self.set("up", up_number)
        self._self.set("admitted", admitted)  # the generation the grant was made for
        self._self.set("status", "up")

    def _visible(self) -> list[tuple[str, Namespace]]:
        """Members this peer considers present: itself and every remote member not down or gone."""
        out = []
        for node_id, ns in self._namespaces.items():
            if node_id != self.node_id:
                peer = self._peers[node_id]
                if peer.liveness == "down" or peer.shutdown_noticed or _status_of(ns) == "left":
                    continue
            out.append((node_id, ns))
        return out

    def _publish_view(self) -> None:
        # Joiners are left out: convergence is about the members, and a join storm would
        # otherwise change every view each time any peer hears of one more joiner, so the
        # leader, which admits on convergence, would wait for every peer to know every joiner
        # (then again for their admission to spread) before admitting anyone.
        entries = [
            (n, ns.generation, status, _up_of(ns))
            for n, ns in self._visible()
            if (status := _status_of(ns)) != "joining"
        ]
        self._self.set("view", view_hash(entries))

    # --- leader ----------------------------------------------------------------------------------

    def leader(self) -> str | None:
        """The oldest member that is up (or leaving) and reachable from here."""
        best: Age | None = None
        for node_id, ns in self._visible():
            up = _up_of(ns)
            if _status_of(ns) in ("up", "leaving") and up > 0:
                age = Age(up, ns.generation, node_id)
                if best is None or age < best:
                    best = age
        return None if best is None else best.node_id

    def converged(self) -> bool:
        """Every reachable up/leaving member publishes our view and none is suspect."""
        mine = self._self.get("view")
        for node_id, ns in self._visible():
            if _status_of(ns) not in ("up", "leaving"):
                continue
            if node_id != self.node_id and (
                self._peers[node_id].liveness == "suspect" or ns.get("view") != mine
            ):
                return False
        return True

    def _leader_duties(self, now: float, wall_ms: int) -> None:
        leader = self.leader()
        if leader != self._last_leader:
            self._last_leader = leader
            self._event(now, "leader", leader or "", 0, "no leader" if leader is None else "")
        if leader != self.node_id:
            self._leader.was_leader = False
            return
        d = self.decisions
        changed = False
        if not self._leader.was_leader:
            self._leader.was_leader = True
            d.begin_term()
            changed = True
        # Acknowledge graceful leaves at once (no gate: the member is going anyway). The leaver
        # stays until its data is handed off to the owners of the table planned without it (its
        # runtime holds it); acknowledged, it no longer counts among the members a table must
        # span, so that table can be published.
        for node_id, ns in self._namespaces.items():
            if _status_of(ns) == "leaving" and d.exited.get(node_id, -1) < ns.generation:
                d.next_epoch()
                d.exited[node_id] = ns.generation
                changed = True
        # Topology changes (admissions, removals) need convergence and a majority of the last
        # view that was seen whole; a minority side freezes (keep-majority).
        if self.converged() and self._has_majority():
            for node_id, ns in sorted(self._namespaces.items()):
                peer = self._peers.get(node_id)
                if _status_of(ns) != "joining" or peer is None or peer.liveness != "alive":
                    continue
                grant = d.grants.get(node_id)
                if grant is not None and grant.generation >= ns.generation:
                    continue
                if node_id in d.replacing and ns.get("filled") is not True:
                    continue  # a replacement serves once it holds what it took over
                up = max(d.max_up_number(), self._max_published_up()) + 1
                if up >= MAX_COUNTER:
                    continue
                term, seq = d.next_epoch()
                d.grants[node_id] = Grant(ns.generation, up, term, seq)
                changed = True
            changed |= self._remove_gone(now, wall_ms)
            changed |= self._plan_partitions()
        if changed:
            self.decisions_dirty = True
            self._self.set("decisions", d.to_plain())

    def _plan_partitions(self) -> bool:
        """Publish a new partition table when the up members changed (leaving ones excluded).

        A member that restarted under the same name rejoins as ``joining`` with a new generation;
        while the table still lists it (it was never removed) it keeps its place, so a restart
        moves no replica (its old incarnation, down, was kept in the table too).
        """
        d = self.decisions
        listed = {o for row in d.table.owners for o in row} if d.table else set()
        members = [
            n
            for n, ns in self._namespaces.items()
            if (_status_of(ns) == "up" or (_status_of(ns) == "joining" and n in listed))
            and not _gone(self._peers.get(n), ns)
        ]
        # Admitted members not heard from since this peer (re)started keep their place, as a
        # member that is down does, until they are removed; so does a replacement still filling.
        members += sorted(d.admitted() - set(self._namespaces))
        members += sorted(
            p for p in d.replacing if p in listed and p not in members and d.admission(p) is None
        )
        owners = plan(
            members,
            partitions=d.table.q if d.table else self.config.partitions,
            replicas=d.table.n if d.table else self.config.replicas,
            previous=d.table,
        )
        if d.table is not None and owners == d.table.owners:
            return False
        n = d.table.n if d.table else self.config.replicas
        candidate = PartitionTable(d.term, d.seq + 1, n, owners)
        if not d.table_ok(candidate):
            return False  # fewer members in reach than the table must span: keep the old one
        term, seq = d.next_epoch()
        d.table = PartitionTable(term, seq, n, owners)
        return True

    def table(self) -> PartitionTable | None:
        """The newest partition table this peer accepted."""
        return self.decisions.table

    def _track_view(self) -> None:
        """Remember the up/leaving members as the majority denominator, but only while every one
        of them is reachable: a view taken during a partition would let a minority count
        itself (and its new joiners) as a majority. A member whose admission stands but who has
        not been heard from yet (after a restart) counts as unreachable."""
        members = frozenset(
            n
            for n, ns in self._namespaces.items()
            if _status_of(ns) in ("up", "leaving") and not _gone(self._peers.get(n), ns)
        )
        unheard = self.decisions.admitted() - set(self._namespaces)
        if not unheard and all(
            n == self.node_id or self._peers[n].liveness == "alive" for n in members
        ):
            self._leader.converged_view = members

    def _has_majority(self) -> bool:
        view = self._leader.converged_view
        reachable = sum(
            1
            for n in view
            if n == self.node_id or (n in self._peers and self._peers[n].liveness != "down")
        )
        if has_majority(reachable, len(view)):
            return True
        # An exact half may act only if it holds the oldest member of that view (keep-oldest).
        ages = [
            Age(_up_of(ns), ns.generation, n)
            for n in view
            if (ns := self._namespaces.get(n)) is not None
        ]
        return reachable * 2 == len(view) and min(ages, default=None) == self._age()

    def _remove_gone(self, now: float, wall_ms: int) -> bool:
        changed = False
        if now - self._started >= self.config.remove_after:
            # Members this peer remembers as admitted but has not heard from since it restarted
            # (nor has anyone it gossips with): gone for good, like a member down that long.
            for node_id in sorted(self.decisions.admitted() - set(self._namespaces)):
                grant = self.decisions.grants[node_id]
                self.decisions.next_epoch()
                self.decisions.removed[node_id] = (grant.generation, wall_ms)
                changed = True
        for node_id, peer in list(self._peers.items()):
            ns = self._namespaces[node_id]
            since = peer.left_since if _gone(peer, ns) else peer.down_since
            if since is None or now - since < self.config.remove_after:
                continue
            self.decisions.next_epoch()
            self.decisions.removed[node_id] = (ns.generation, wall_ms)
            changed = True
        if changed:
            self.decisions.prune(wall_ms, self.config.tombstone_ttl_ms)
        return changed

    def _age(self) -> Age:
        return Age(self.up_number, self.generation, self.node_id)

    def _max_published_up(self) -> int:
        return max((_up_of(ns) for ns in self._namespaces.values()), default=0)

    # --- views for the API -----------------------------------------------------------------------

    def members(self, now: float) -> list[MemberView]:
        """This peer's membership table (sorted by name), including removed incarnations."""
        leader = self.leader()
        ranked = sorted(
            Age(_up_of(ns), ns.generation, n)
            for n, ns in self._visible()
            if _status_of(ns) in ("up", "leaving") and _up_of(ns) > 0
        )
        rank = {age.node_id: i + 1 for i, age in enumerate(ranked)}
        rows: list[MemberView] = []
        for node_id, ns in sorted(self._namespaces.items()):
            status: str = _status_of(ns)
            is_self = node_id == self.node_id
            peer = self._peers.get(node_id)
            phi: float | None = None
            reachable = True
            if peer is not None:
                phi = round(peer.window.phi(now), 3)
                reachable = peer.liveness != "down"
                if _gone(peer, ns):
                    status = "left"
                elif peer.liveness == "down":
                    status = "down"
            up = _up_of(ns)
            rows.append(
                MemberView(
                    name=node_id,
                    address=_addr_of(ns),
                    status=status,
                    reachable=reachable,
                    up_number=up or None,
                    age_rank=rank.get(node_id),
                    generation=ns.generation,
                    heartbeat=ns.heartbeat,
                    phi=phi,
                    metadata=_metadata_of(ns),
                    is_leader=node_id == leader,
                    is_self=is_self,
                )
            )
        for node_id, (gen, _) in sorted(self.decisions.removed.items()):
            if node_id not in self._namespaces:
                rows.append(
                    MemberView(
                        node_id, None, "removed", False, None, None, gen, 0, None, {}, False, False
                    )
                )
        rows.sort(key=lambda r: r.name)
        return rows

    def member_generations(self) -> dict[str, int]:
        return {n: ns.generation for n, ns in self._namespaces.items()}

    def address_of(self, node_id: str) -> str | None:
        ns = self._namespaces.get(node_id)
        return None if ns is None else _addr_of(ns)

    def announced_address(self, node_id: str) -> object:
        """The raw address value ``node_id`` gossips (unchecked: a cache key for callers that
        validated it once with :meth:`address_of`)."""
        ns = self._namespaces.get(node_id)
        return None if ns is None else ns.get("addr")

    def reachable_members(self) -> set[str]:
        """Names of the up/leaving members this peer can reach, itself included when up."""
        return {n for n, ns in self._visible() if _status_of(ns) in ("up", "leaving")}

    def live_addresses(self) -> list[str]:
        """Addresses of the remote members this peer considers reachable (for shutdown notices)."""
        return sorted(
            a for n, ns in self._visible() if n != self.node_id and (a := _addr_of(ns)) is not None
        )

    def _event(
        self, now: float, kind: str, node_id: str, generation: int, detail: str = ""
    ) -> None:
        self._changes += 1
        self.events.append(MembershipEvent(now, kind, node_id, generation, detail))


def _gone(peer: _Peer | None, ns: Namespace) -> bool:
    return _status_of(ns) == "left" or (peer is not None and peer.shutdown_noticed)


def _status_of(ns: Namespace) -> SelfStatus:
    value = ns.get("status")
    if isinstance(value, str) and value in _SELF_STATUSES:
        return value  # type: ignore[return-value]
    return "joining"


def _up_of(ns: Namespace) -> int:
    value = ns.get("up")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_COUNTER:
        return value
    return 0


def _admitted_of(ns: Namespace) -> int | None:
    """The generation whose admission a member's ``up`` status rests on (``None``: not up)."""
    value = ns.get("admitted")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNTER:
        return value
    return None


def _addr_of(ns: Namespace) -> str | None:
    value = ns.get("addr")
    if not isinstance(value, str) or not 0 < len(value) <= 300 or not _parses(value):
        return None
    return value


@functools.lru_cache(maxsize=4096)
def _parses(value: str) -> bool:
    # Cached: the data path looks up a member's address for every replica request.
    try:
        Address.parse(value)
    except ValueError:
        return False
    return True


def _metadata_of(ns: Namespace) -> dict[str, str]:
    return {
        key[len(META_PREFIX) :]: value
        for key, (value, _) in sorted(ns.entries.items())
        if key.startswith(META_PREFIX) and isinstance(value, str)
    }


__all__ = [
    "GossipConfig",
    "Gossiper",
    "MemberView",
    "MembershipEvent",
    "replace",
]
