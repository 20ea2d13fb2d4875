"""Node statistics, each declared once (sans-IO): what a node counts and measures, and its snapshot.

:data:`STATISTICS` declares every statistic a node reports: its name (the
:class:`NodeStatistics` field and the ``gossipkv stats --json`` key), its kind, its unit, a help
line and, for maps, the name of their label. Everything that shows statistics reads these
declarations instead of keeping its own list: the :class:`NodeStatistics` docstring is built from
them, a peer's wire body is checked against them (:func:`statistics_from_body`), and the CLI's
table, its Prometheus text and ``/metrics``, and the dashboard take their help texts, metric names
and types from them. Tests check that the declarations and the dataclass fields match one to one,
and that every counter a node keeps has a declaration.

Pattern: one declaration that several views read.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

from ._errors import DecodeError

#: ``info``: identity, state or structure (not a number: the CLI renders each one its own way);
#: ``counter``: only grows while the node runs; ``gauge``: a value now; ``counters`` and
#: ``gauges``: a map of those, keyed by the value of ``label``; ``histograms``: a latency
#: histogram per ``label`` value (see :mod:`gossipkv._histogram`).
Kind = Literal["info", "counter", "gauge", "counters", "gauges", "histograms"]


@dataclass(frozen=True, slots=True)
class Statistic:
    """The declaration of one statistic of :class:`NodeStatistics`.

    Attributes:
      name: the :class:`NodeStatistics` field, also the key in ``gossipkv stats --json``.
      kind: ``counter`` (only grows while the node runs), ``gauge`` (a value now),
        ``counters`` or ``gauges`` (a map of those, keyed by ``label``), ``histograms`` (a latency
        histogram per ``label`` value) or ``info`` (identity, state or structure: not a metric).
      help: one line saying what it counts or measures (the Prometheus ``HELP`` text).
      unit: ``seconds`` or ``bytes``; empty for a count.
      label: for maps, what their keys are (the Prometheus label name).
      metric: the Prometheus name (``gossipkv_<metric>``, counters with ``_total``); empty for
        ``info``, which only the few that have a metric of their own export.
      details: more about it, for the :class:`NodeStatistics` docstring.
    """

    name: str
    kind: Kind
    help: str
    unit: str = ""
    label: str = ""
    metric: str = ""
    details: str = ""

    @property
    def title(self) -> str:
        """The name as a table row shows it (``kv_gets`` -> ``kv gets``)."""
        return self.name.replace("_", " ")


def _stat(
    name: str,
    kind: Kind,
    help: str,
    *,
    unit: str = "",
    label: str = "",
    metric: str | None = None,
    details: str = "",
) -> Statistic:
    exported = metric if metric is not None else ("" if kind == "info" else name)
    return Statistic(name, kind, help, unit, label, exported, details)


_REFUSAL_REASONS = (
    "By reason (see :class:`NetworkLimits`): ``connection_limit``, ``source_limit`` and "
    "``peer_limit`` (accepted connections over ``max_connections``, "
    "``max_connections_per_source``, ``max_connections_per_peer``: closed at once), "
    "``hello_timeout`` (an accepted connection that did not complete its ``hello`` within "
    "``request_timeout``), ``frame_timeout`` (a frame body slower than ``frame_timeout``), "
    "``send_timeout`` (a connection that stopped reading: a write made no progress for "
    "``frame_timeout``), ``idle_timeout`` (closed after ``idle_timeout`` with nothing to do), "
    "``watch_limit`` (a watch over ``max_watches_per_connection`` or ``max_watches``); and "
    "writes refused by a :class:`StorageLimits` limit, by error code (``value_too_large``, "
    "``value_too_deep``, ``record_too_large``, ``too_many_siblings``, ``invalid_context``, "
    "``key_too_large``, ``invalid_key``, ``value_not_encodable``): a refused write changed "
    "nothing. Also ``member_message_from_client`` and ``operator_message_from_client`` (a role "
    "sent what only a member or an operator may), ``wrong_member`` (another name answered at a "
    "member's address: nothing was sent), and ``gossip_<reason>`` (gossip no honest member "
    "could have sent; see :meth:`Decisions.vet`, plus ``generation_ahead``, "
    "``shutdown_not_own`` and ``forged_self``)."
)

#: Every statistic of :class:`NodeStatistics`, in the order tables show them.
STATISTICS: tuple[Statistic, ...] = (
    # --- identity and membership
    _stat("name", "info", "This node's name."),
    _stat("address", "info", "The address it advertises."),
    _stat("cluster", "info", "The cluster name."),
    _stat("generation", "gauge", "This node's generation (incarnation)."),
    _stat(
        "status",
        "info",
        "This node's own lifecycle status (joining, up, leaving, left).",
        metric="node_status",
    ),
    _stat("leader", "info", "The emergent leader as this node sees it, or None."),
    _stat(
        "converged",
        "gauge",
        "1 when every reachable up member publishes this node's membership view, else 0.",
    ),
    _stat(
        "members_by_status",
        "gauges",
        "Members this node lists, by status.",
        label="status",
        metric="members",
    ),
    # --- the partition table
    _stat(
        "table_epoch",
        "info",
        "The partition table's epoch [term, seq], or None before the first table.",
    ),
    _stat("partitions", "gauge", "Partitions in the table (0: no table yet)."),
    _stat("replicas", "gauge", "Replicas per partition (N)."),
    _stat(
        "replicas_effective",
        "gauge",
        "Owners of the partition with the fewest (0 before the first table).",
        details="Below ``replicas`` when the cluster has fewer members than N.",
    ),
    _stat(
        "read_quorum",
        "gauge",
        "Replicas a read waits for by default (R, capped at a partition's owners).",
    ),
    _stat(
        "write_quorum",
        "gauge",
        "Replicas a write waits for by default (W, capped at a partition's owners).",
        details="A 1-member cluster really runs at N=R=W=1.",
    ),
    _stat(
        "partitions_owned",
        "gauges",
        "Partitions each member holds a replica of (any position in the preference list), "
        "in this node's table.",
        label="member",
    ),
    _stat(
        "under_replicated",
        "gauge",
        "Partitions with an owner unreachable or still pulling them.",
        metric="under_replicated_partitions",
        details="As this node sees it: fewer than N full copies are certain there.",
    ),
    # --- connections and frames
    _stat(
        "connections",
        "gauge",
        "Open connections (channels past the hello): members and clients, both ways.",
    ),
    _stat("peer_connections", "gauge", "Open connections to and from other members."),
    _stat("client_connections", "gauge", "Open connections from clients."),
    _stat(
        "accepted_connections",
        "gauge",
        "Accepted connections open now, before or after their hello.",
        details="What ``NetworkLimits.max_connections`` caps.",
    ),
    _stat("watches", "gauge", "Watches and monitors open on this node."),
    _stat(
        "outbound_queued_bytes",
        "gauge",
        "Bytes queued for sending on all connections (replies and requests not yet written).",
        unit="bytes",
    ),
    _stat("frames_in", "counter", "Frames received, every connection included."),
    _stat("frames_out", "counter", "Frames sent."),
    _stat("bytes_in", "counter", "Bytes received in frames.", unit="bytes"),
    _stat("bytes_out", "counter", "Bytes sent in frames.", unit="bytes"),
    _stat(
        "dropped_frames",
        "counters",
        "Frames or events dropped, by reason.",
        label="reason",
        details="``too_large``, ``bad_cbor``, ``events_overflow``, ``watch_overflow``, ...",
    ),
    _stat(
        "refused_handshakes",
        "counters",
        "Handshakes refused, by reason (cluster, protocol, identity).",
        label="reason",
    ),
    _stat(
        "refusals",
        "counters",
        "Connections, frames, subscriptions, writes and gossip refused to protect this node, "
        "by reason.",
        label="reason",
        details=_REFUSAL_REASONS,
    ),
    # --- event loop
    _stat(
        "max_loop_lag",
        "gauge",
        "Largest event-loop lag measured so far.",
        unit="seconds",
        metric="max_loop_lag_seconds",
    ),
    _stat(
        "last_loop_lag",
        "gauge",
        "Latest event-loop lag measured.",
        unit="seconds",
        metric="last_loop_lag_seconds",
    ),
    # --- gossip
    _stat("gossip_rounds", "counter", "Gossip rounds this node started."),
    _stat("syns_received", "counter", "Gossip rounds other members started with this node."),
    _stat("deltas_applied", "counter", "Per-member gossip deltas this node applied."),
    _stat(
        "gossip_stale_ignored",
        "counter",
        "Gossip deltas ignored: older than what this node holds, or of an older incarnation.",
    ),
    _stat(
        "gossip_from_removed",
        "counter",
        "Gossip deltas of removed incarnations ignored (their decisions still merged).",
    ),
    _stat(
        "gossip_bad_values",
        "counter",
        "Gossiped leader decisions that did not parse (ignored).",
    ),
    _stat(
        "identity_conflicts",
        "counter",
        "Gossip showing another process under this node's name with a newer generation.",
    ),
    _stat(
        "budget_truncations", "counter", "Gossip deltas cut short by the max_delta_bytes budget."
    ),
    _stat("pause_guards", "counter", "Times the local-pause guard suspended failure verdicts."),
    # --- failure detection
    _stat("probes", "counter", "Failure-detection probes this node made."),
    _stat("probes_failed", "counter", "Probes that neither the member nor its helpers answered."),
    _stat("indirect_probes", "counter", "Unanswered probes for which helpers were sought to try."),
    _stat("suspicions", "counter", "Members this node came to suspect."),
    _stat("verdicts", "counter", "Down verdicts this node published."),
    _stat("verdicts_refuted", "counter", "Verdicts about this node that it refuted."),
    _stat(
        "missed_nacks",
        "counter",
        "Failed probes whose helpers did not answer at all (this node may be the slow one).",
    ),
    _stat(
        "local_health",
        "gauge",
        "Lifeguard's local health score: 0 when this node keeps up; each step stretches its "
        "probe interval and timeouts.",
    ),
    # --- data path
    _stat("kv_gets", "counter", "Reads this node coordinated."),
    _stat("kv_puts", "counter", "Writes this node coordinated."),
    _stat("kv_deletes", "counter", "Deletes this node coordinated."),
    _stat("kv_forwarded", "counter", "Writes forwarded to a replica of the key."),
    _stat(
        "kv_put_requests",
        "counter",
        "Writes and deletes checked and routed here (each request once at every peer it "
        "reaches, retries included).",
    ),
    _stat(
        "idempotent_hits",
        "counter",
        "Retried writes answered with their first result instead of written again.",
    ),
    _stat("read_repairs", "counter", "Replicas brought up to date by read repair."),
    _stat(
        "read_repairs_skipped",
        "counter",
        "Read repairs skipped: too many already in flight (anti-entropy heals those keys).",
    ),
    _stat("siblings_seen", "counter", "Extra siblings found by this node's writes."),
    _stat(
        "contexts_clamped",
        "counter",
        "Writes whose context claimed dots this replica did not hold.",
        details="Honoured only as far as it could check them (forged, or written after a read "
        "it had not seen).",
    ),
    _stat(
        "context_catch_ups",
        "counter",
        "Writes that first fetched the other owners' state to check a context.",
    ),
    _stat(
        "kv_errors",
        "counters",
        "Failed replica calls, repairs and handoffs, by exception name.",
        label="kind",
    ),
    _stat(
        "inflight_bytes",
        "gauge",
        "Memory reserved now by the reads and writes this node coordinates.",
        unit="bytes",
        details="Bounded by ``KVConfig.max_inflight_bytes``.",
    ),
    _stat(
        "admission_waits",
        "counter",
        "Reads and writes that waited for room in the in-flight memory budget.",
    ),
    _stat(
        "latency",
        "histograms",
        "Latency of reads and writes this node coordinated (get, put), of replica answers to "
        "them (replica) and of gossip exchanges (gossip_round: syn to syn-ack).",
        unit="seconds",
        label="op",
        metric="request_duration_seconds",
        details='Each ``{"buckets", "counts", "sum", "count"}`` in seconds (see '
        ":mod:`gossipkv._histogram`).",
    ),
    # --- hinted handoff
    _stat("hints_pending", "gauge", "Hinted writes waiting for their owner."),
    _stat("hints_stored", "counter", "Hinted writes stored for unreachable owners."),
    _stat("hints_delivered", "counter", "Hinted writes handed over to their owner."),
    _stat(
        "hints_expired",
        "counter",
        "Hints dropped undelivered: held longer than tombstone_grace.",
    ),
    # --- storage
    _stat("storage_keys", "gauge", "Keys in this node's replica."),
    _stat("storage_engine", "info", "The storage engine: memory or log."),
    _stat(
        "storage_disk_bytes",
        "gauge",
        "Bytes the data engine's files take on disk (0 in memory).",
        unit="bytes",
    ),
    _stat(
        "storage_live_bytes",
        "gauge",
        "Bytes of the records still current (the rest compaction can reclaim).",
        unit="bytes",
    ),
    _stat("storage_segments", "gauge", "Log segments of the data engine."),
    _stat(
        "storage_delete_markers",
        "gauge",
        "Delete markers the log engine still keeps (dropped by compaction).",
        details="Each costs a few bytes of memory until no older record of its key remains.",
    ),
    _stat("storage_pending_writes", "gauge", "Writes waiting for the next group commit."),
    _stat("storage_fsyncs", "counter", "fsync calls made by the data engine."),
    _stat(
        "storage_page_cache_reads",
        "counter",
        "Gets the data engine read from the page cache on the event loop, with no thread.",
        details="Stays 0 where the file system refuses RWF_NOWAIT (NFS, FUSE): every get then "
        "costs a thread hand-off.",
    ),
    _stat("storage_compactions", "counter", "Compactions of the data engine."),
    _stat("storage_compaction_errors", "counter", "Compactions of the data engine that failed."),
    _stat(
        "storage_bytes_reclaimed",
        "counter",
        "Bytes compaction reclaimed.",
        unit="bytes",
    ),
    _stat(
        "storage_corrupt_records_skipped",
        "counter",
        "Corrupt records skipped while reading the log at start.",
    ),
    _stat(
        "storage_torn_tail_truncations",
        "counter",
        "Torn log tails cut off at start (a crash during a write).",
    ),
    _stat(
        "storage_recovery_seconds",
        "gauge",
        "Time the data engine took to open (recovery from its log).",
        unit="seconds",
    ),
    _stat(
        "quarantined_records",
        "counter",
        "Unreadable records (data and hints) moved aside into the data dir's quarantine/ "
        "folders since start.",
        details="Each key is repaired from the other replicas.",
    ),
    _stat(
        "quarantine_repairs",
        "counter",
        "Quarantined keys restored from the other replicas (and hints written again).",
    ),
    _stat("quarantine_pending", "gauge", "Quarantined keys and hints still waiting for repair."),
    _stat(
        "quarantine_dropped",
        "counter",
        "Quarantined keys and hints not queued for repair: the queue was full.",
        details="Anti-entropy repairs those keys later; such hints are lost.",
    ),
    _stat("quarantine_repair_errors", "counter", "Quarantine repair rounds that failed."),
    # --- tombstones
    _stat(
        "tombstone_grace",
        "gauge",
        "KVConfig.tombstone_grace (absent: tombstones are kept).",
        unit="seconds",
        metric="tombstone_grace_seconds",
        details="``None`` when tombstones are kept.",
    ),
    _stat("tombstones_pending", "gauge", "Deleted keys whose tombstone this replica still holds."),
    _stat(
        "tombstones_reaped",
        "counter",
        "Tombstones forgotten: every owner held them past tombstone_grace.",
    ),
    _stat("tombstone_reaper_rounds", "counter", "Tombstone reaping rounds."),
    _stat(
        "tombstones_checked",
        "counter",
        "Tombstones past the grace offered to the other owners for reaping.",
    ),
    _stat(
        "tombstones_blocked",
        "counter",
        "Reaping checks that found a tombstone not yet held (or not reapable) everywhere.",
    ),
    _stat("tombstone_reaper_errors", "counter", "Reaping rounds or checks that failed."),
    _stat(
        "replica_wiped",
        "counter",
        "Keys dropped at start: back after more than tombstone_grace away (or removed).",
        details="They are filled again from the other owners.",
    ),
    # --- anti-entropy
    _stat(
        "anti_entropy_rounds",
        "counter",
        "Anti-entropy rounds started (one partition, one other owner).",
    ),
    _stat(
        "anti_entropy_partitions_compared",
        "counter",
        "Partitions compared with another owner (by their Merkle tree roots).",
    ),
    _stat(
        "anti_entropy_partitions_differing",
        "counter",
        "Compared partitions whose tree roots differed.",
    ),
    _stat(
        "anti_entropy_keys_repaired",
        "counter",
        "Keys exchanged by anti-entropy because their clocks differed (both ways).",
    ),
    _stat(
        "anti_entropy_errors",
        "counter",
        "Anti-entropy rounds or key repairs that failed (kinds in kv_errors).",
    ),
    _stat(
        "anti_entropy_tree_roots_compared",
        "counter",
        "Merkle tree roots compared (one per partition pair in sync).",
    ),
    _stat(
        "anti_entropy_branches_exchanged",
        "counter",
        "Tree branches whose segment hashes were fetched (their hashes differed).",
    ),
    _stat(
        "anti_entropy_segments_exchanged",
        "counter",
        "Tree segments whose keys were fetched (their hashes differed).",
        details="With k differing keys at most k per partition compared.",
    ),
    _stat(
        "anti_entropy_trees_checked",
        "counter",
        "Partition trees checked against the store by the scheduled rebuild.",
    ),
    _stat(
        "anti_entropy_tree_mismatches",
        "counter",
        "Checked trees that disagreed with the store (replaced).",
    ),
    # --- ownership changes
    _stat(
        "ownership_handoff_rounds",
        "counter",
        "Ownership handoff rounds that looked for keys to send.",
    ),
    _stat(
        "ownership_handoff_partitions",
        "counter",
        "Partitions no longer owned whose keys were sent completely to their current owners.",
    ),
    _stat(
        "ownership_handoff_keys",
        "counter",
        "Keys sent to the current owners of their partition.",
    ),
    _stat(
        "ownership_handoff_errors",
        "counter",
        "Ownership handoff sends or rounds that failed (kinds in kv_errors).",
    ),
    _stat(
        "partitions_filling",
        "gauge",
        "Partitions a table change moved here that are not pulled completely yet.",
    ),
    _stat("partitions_filled", "counter", "Gained partitions pulled completely."),
    _stat("keys_filled", "counter", "Keys stored by transfers into this node."),
    _stat("transfer_pages", "counter", "Transfer pages pulled into this node."),
    _stat("transfer_pages_sent", "counter", "Transfer pages this node served to new owners."),
    _stat(
        "transfer_errors",
        "counter",
        "Transfer pages that failed (the source unreachable, or it refused).",
    ),
    _stat(
        "transfer_bad_pages",
        "counter",
        "Transfer pages refused whole: the source sent invalid data.",
        details="Keys out of order or of another partition, undecodable clocks: nothing of "
        "them is stored, and the page is asked for again later.",
    ),
    _stat(
        "transfers",
        "info",
        "The transfers into this node in flight.",
        details='``{"partition", "from", "to", "keys_done", "keys_total", "rate", "error"}`` '
        "each (``rate`` in keys per second; ``error`` says why the last page failed, or is "
        "``None``).",
    ),
    _stat(
        "leave",
        "info",
        "The progress of a decommission (empty when none).",
        details="``state`` (``handing_off``, ``failed``, ``leaving``), ``partitions_left`` of "
        "``partitions_total`` not yet pulled by all their current owners, ``hints_left``, and "
        "``reason`` (what it waits for).",
    ),
)

#: The declarations by name.
BY_NAME: dict[str, Statistic] = {s.name: s for s in STATISTICS}


def _attributes_doc() -> str:
    lines = ["", "    Attributes:"]
    for s in STATISTICS:
        text = s.help if not s.details else f"{s.help} {s.details}"
        if s.unit:
            text += f" In {s.unit}."
        lines.append(f"      {s.name}: {text}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """A frozen snapshot of one node's state and counters (see :meth:`Node.statistics`).

    The same fields, as a plain map, are the ``gossipkv stats --json`` shape. Counters only grow
    while the node runs; maps keyed by a reason or an error name hold only the keys seen so far.
    :meth:`declarations` says what each field is (kind, unit, help text): the ``Attributes``
    below are made from them.
    """

    name: str
    address: str
    cluster: str
    generation: int
    status: str
    leader: str | None
    converged: bool
    members_by_status: dict[str, int]
    gossip_rounds: int
    syns_received: int
    deltas_applied: int
    budget_truncations: int
    pause_guards: int
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    dropped_frames: dict[str, int]
    refused_handshakes: dict[str, int]
    connections: int
    max_loop_lag: float
    last_loop_lag: float
    table_epoch: list[int] | None
    partitions: int
    replicas: int
    partitions_owned: dict[str, int]
    kv_gets: int
    kv_puts: int
    kv_deletes: int
    kv_forwarded: int
    read_repairs: int
    hints_pending: int
    hints_stored: int
    hints_delivered: int
    siblings_seen: int
    kv_errors: dict[str, int]
    storage_keys: int
    anti_entropy_rounds: int = 0
    anti_entropy_partitions_compared: int = 0
    anti_entropy_partitions_differing: int = 0
    anti_entropy_keys_repaired: int = 0
    anti_entropy_errors: int = 0
    anti_entropy_tree_roots_compared: int = 0
    anti_entropy_branches_exchanged: int = 0
    anti_entropy_segments_exchanged: int = 0
    anti_entropy_trees_checked: int = 0
    anti_entropy_tree_mismatches: int = 0
    ownership_handoff_rounds: int = 0
    ownership_handoff_partitions: int = 0
    ownership_handoff_keys: int = 0
    ownership_handoff_errors: int = 0
    peer_connections: int = 0
    client_connections: int = 0
    probes: int = 0
    probes_failed: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    verdicts: int = 0
    verdicts_refuted: int = 0
    missed_nacks: int = 0
    local_health: int = 0
    leave: dict[str, object] = field(default_factory=dict)
    refusals: dict[str, int] = field(default_factory=dict)
    contexts_clamped: int = 0
    context_catch_ups: int = 0
    quarantined_records: int = 0
    quarantine_repairs: int = 0
    quarantine_pending: int = 0
    inflight_bytes: int = 0
    admission_waits: int = 0
    partitions_filling: int = 0
    partitions_filled: int = 0
    keys_filled: int = 0
    transfer_errors: int = 0
    transfer_bad_pages: int = 0
    transfers: list[dict[str, object]] = field(default_factory=list)
    under_replicated: int = 0
    tombstone_grace: float | None = 3600.0
    tombstones_pending: int = 0
    tombstones_reaped: int = 0
    hints_expired: int = 0
    replica_wiped: int = 0
    replicas_effective: int = 0
    read_quorum: int = 0
    write_quorum: int = 0
    latency: dict[str, dict[str, object]] = field(default_factory=dict)
    accepted_connections: int = 0
    watches: int = 0
    outbound_queued_bytes: int = 0
    gossip_stale_ignored: int = 0
    gossip_from_removed: int = 0
    gossip_bad_values: int = 0
    identity_conflicts: int = 0
    kv_put_requests: int = 0
    idempotent_hits: int = 0
    read_repairs_skipped: int = 0
    storage_engine: str = ""
    storage_disk_bytes: int = 0
    storage_live_bytes: int = 0
    storage_segments: int = 0
    storage_pending_writes: int = 0
    storage_delete_markers: int = 0
    storage_fsyncs: int = 0
    storage_page_cache_reads: int = 0
    storage_compactions: int = 0
    storage_compaction_errors: int = 0
    storage_bytes_reclaimed: int = 0
    storage_corrupt_records_skipped: int = 0
    storage_torn_tail_truncations: int = 0
    storage_recovery_seconds: float = 0.0
    quarantine_dropped: int = 0
    quarantine_repair_errors: int = 0
    tombstone_reaper_rounds: int = 0
    tombstones_checked: int = 0
    tombstones_blocked: int = 0
    tombstone_reaper_errors: int = 0
    transfer_pages: int = 0
    transfer_pages_sent: int = 0

    @staticmethod
    def declarations() -> tuple[Statistic, ...]:
        """What each field is, in the order tables show them.

        Returns:
          One :class:`Statistic` per field: its name, kind, unit, help text and, for maps, the
          label of their keys.
        """
        return STATISTICS


NodeStatistics.__doc__ = (NodeStatistics.__doc__ or "").rstrip() + "\n" + _attributes_doc()


def statistics_body(stats: NodeStatistics) -> dict[str, object]:
    """A statistics snapshot as a plain map (the ``stats --json`` shape)."""
    return dataclasses.asdict(stats)


def statistics_from_body(body: dict[str, object]) -> NodeStatistics:
    """The snapshot a peer sent (:func:`statistics_body`), checked field by field.

    A field the peer does not send (an older version) takes its default; a key this version does
    not know (a newer peer) is ignored.

    Raises:
      DecodeError: ``bad_field``: a field is missing (and has no default) or has the wrong type.
    """
    values: dict[str, object] = {}
    for f in dataclasses.fields(NodeStatistics):
        if f.name not in body:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise DecodeError("bad_field", f"statistics: {f.name} missing")
            continue
        value = body[f.name]
        if not _fits(value, _HINTS[f.name]) or (
            BY_NAME[f.name].kind == "histograms"
            and not all(_is_histogram(h) for h in value.values())  # type: ignore[attr-defined]
        ):
            raise DecodeError(
                "bad_field", f"statistics: {f.name} is not {_HINTS[f.name]}: {value!r:.80}"
            )
        values[f.name] = value
    return NodeStatistics(**values)  # type: ignore[arg-type]  # each value checked above


_HINTS: dict[str, object] = typing.get_type_hints(NodeStatistics)


def _is_histogram(snapshot: dict[str, object]) -> bool:
    """Whether a latency histogram from a peer has the shape of :meth:`LatencyHistogram.snapshot`
    (what the CLI's percentiles and Prometheus histograms read)."""
    buckets, counts = snapshot.get("buckets"), snapshot.get("counts")
    return (
        _fits(buckets, list[float])
        and _fits(counts, list[int])
        and len(counts) == len(buckets) + 1  # type: ignore[arg-type]
        and _fits(snapshot.get("sum"), float)
        and _fits(snapshot.get("count"), int)
    )


def _fits(value: object, hint: object) -> bool:
    """Whether ``value`` (plain data from the codec) has the type ``hint`` names."""
    if hint is object:
        return True
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and not math.isnan(value)
        )
    if hint is bool or hint is str:
        return isinstance(value, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            _fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()
        )
    # ``X | None``
    return any(_fits(value, arg) for arg in args)
