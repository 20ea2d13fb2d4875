"""Pure rendering of a statistics snapshot (``Client.statistics()``): a rich table and the
Prometheus text exposition format. No I/O: the ``stats`` command fetches, these functions render."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from rich import box
from rich.table import Table

# Monotonic counters of the snapshot: field -> help text. Exposed as ``gossipkv_<field>_total``.
COUNTERS: dict[str, str] = {
    "gossip_rounds": "Gossip rounds started by this node.",
    "syns_received": "Gossip syns received.",
    "deltas_applied": "Gossip deltas applied.",
    "budget_truncations": "Gossip deltas cut short by the byte budget.",
    "pause_guards": "Failure-detector pause guards triggered.",
    "frames_in": "Frames received.",
    "frames_out": "Frames sent.",
    "bytes_in": "Bytes received.",
    "bytes_out": "Bytes sent.",
    "kv_gets": "Key-value reads.",
    "kv_puts": "Key-value writes coordinated here.",
    "kv_deletes": "Key-value deletes coordinated here.",
    "kv_forwarded": "Writes forwarded to a replica.",
    "read_repairs": "Read repairs sent.",
    "hints_stored": "Hinted writes stored for unreachable owners.",
    "hints_delivered": "Hinted writes delivered to their owner.",
    "siblings_seen": "Concurrent siblings seen by writes.",
    "anti_entropy_rounds": "Anti-entropy rounds started (one partition, one other owner).",
    "anti_entropy_partitions_compared": "Partitions compared by anti-entropy (tree roots).",
    "anti_entropy_partitions_differing": "Compared partitions whose tree roots differed.",
    "anti_entropy_keys_repaired": "Keys exchanged by anti-entropy because their clocks differed.",
    "anti_entropy_errors": "Anti-entropy rounds or key repairs that failed.",
    "anti_entropy_tree_roots_compared": "Merkle tree roots compared by anti-entropy.",
    "anti_entropy_branches_exchanged": "Tree branches whose segment hashes were fetched.",
    "anti_entropy_segments_exchanged": "Tree segments whose keys were fetched.",
    "anti_entropy_trees_checked": "Partition trees checked against the store (rebuilds).",
    "anti_entropy_tree_mismatches": "Checked trees that disagreed with the store (replaced).",
    "ownership_handoff_rounds": "Ownership handoff rounds that looked for keys to send.",
    "ownership_handoff_partitions": "Partitions no longer owned, handed off completely.",
    "ownership_handoff_keys": "Keys sent to the current owners of their partition.",
    "ownership_handoff_errors": "Ownership handoff sends or rounds that failed.",
    "contexts_clamped": "Writes whose context claimed dots this replica did not hold.",
    "context_catch_ups": "Writes that fetched the other owners' state to check a context.",
    "quarantined_records": "Unreadable records moved aside (then repaired from replicas).",
    "quarantine_repairs": "Quarantined keys and hints restored from the other replicas.",
    "admission_waits": "Reads and writes that waited for room in the in-flight memory budget.",
    "partitions_filled": "Gained partitions pulled completely from their other owners.",
    "keys_filled": "Keys pulled into gained partitions.",
    "transfer_errors": "Transfer pages that failed (source unreachable, or it refused).",
    "transfer_bad_pages": "Transfer pages refused whole: the source sent invalid data.",
    "tombstones_reaped": "Tombstones forgotten: every owner held them past tombstone_grace.",
    "hints_expired": "Hints dropped undelivered: kept longer than tombstone_grace.",
    "replica_wiped": "Keys dropped at start: back after more than tombstone_grace away.",
}
# Per-reason counters: field -> (label name, help text).
LABELLED_COUNTERS: dict[str, tuple[str, str]] = {
    "dropped_frames": ("reason", "Frames or events dropped, by reason."),
    "refused_handshakes": ("reason", "Handshakes refused, by reason."),
    "refusals": (
        "reason",
        "Connections, frames, subscriptions and writes refused by a limit, by reason.",
    ),
    "kv_errors": ("kind", "Data-path errors, by kind."),
}
# Point-in-time gauges: field -> (metric suffix, help text).
GAUGES: dict[str, tuple[str, str]] = {
    "generation": ("generation", "This node's generation (incarnation)."),
    "connections": ("connections", "Open connections (members and clients, both ways)."),
    "peer_connections": ("peer_connections", "Open connections to and from other members."),
    "client_connections": ("client_connections", "Open connections from clients."),
    "max_loop_lag": ("max_loop_lag_seconds", "Largest event-loop lag seen."),
    "last_loop_lag": ("last_loop_lag_seconds", "Most recent event-loop lag."),
    "partitions": ("partitions", "Partitions in the table (0: no table yet)."),
    "replicas": ("replicas", "Replicas per partition (N)."),
    "hints_pending": ("hints_pending", "Hinted writes waiting for delivery."),
    "storage_keys": ("storage_keys", "Keys in this replica's storage."),
    "quarantine_pending": ("quarantine_pending", "Quarantined keys and hints awaiting repair."),
    "inflight_bytes": ("inflight_bytes", "Memory reserved by coordinated reads and writes."),
    "partitions_filling": ("partitions_filling", "Partitions moved here not pulled in yet."),
    "under_replicated": (
        "under_replicated_partitions",
        "Partitions with an owner unreachable or still pulling them.",
    ),
    "tombstones_pending": ("tombstones_pending", "Deleted keys whose tombstone is still held."),
}


#: Every status a node can have itself (the one-hot ``gossipkv_node_status``).
NODE_STATUSES = ("joining", "up", "leaving", "left", "down", "removed")
#: The operations with a latency histogram, in display order.
LATENCY_OPS = ("get", "put", "replica", "gossip_round")


def percentiles(stats: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """p50 and p99 in milliseconds per operation, from the snapshot's histograms."""
    from gossipkv import histogram_quantile

    out: dict[str, tuple[float | None, float | None]] = {}
    for op in LATENCY_OPS:
        snap = (stats.get("latency") or {}).get(op)
        if not isinstance(snap, dict):
            continue
        p50, p99 = histogram_quantile(snap, 0.5), histogram_quantile(snap, 0.99)
        out[op] = (
            None if p50 is None else p50 * 1000.0,
            None if p99 is None else p99 * 1000.0,
        )
    return out


def _go_float(bound: float) -> str:
    """A bucket bound as Prometheus writes it (``+Inf``, ``0.005``)."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


class SnapshotCollector(Collector):
    """Exposes one statistics snapshot (a plain dict) as ``gossipkv_*`` metric families."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        # No label that changes while the node runs (leader, status): a new leader must not
        # start new series. Those are gossipkv_is_leader and the one-hot gossipkv_node_status.
        info = GaugeMetricFamily(
            "gossipkv_node_info",
            "Identity of the node (value is always 1).",
            labels=["name", "address", "cluster"],
        )
        info.add_metric(
            [str(s.get("name", "")), str(s.get("address", "")), str(s.get("cluster", ""))], 1
        )
        yield info
        leader = GaugeMetricFamily(
            "gossipkv_is_leader", "1 while this node sees itself as the leader, else 0."
        )
        leader.add_metric([], 1 if s.get("leader") and s.get("leader") == s.get("name") else 0)
        yield leader
        has_leader = GaugeMetricFamily(
            "gossipkv_has_leader", "1 while this node sees a leader, else 0."
        )
        has_leader.add_metric([], 1 if s.get("leader") else 0)
        yield has_leader
        status = GaugeMetricFamily(
            "gossipkv_node_status",
            "This node's own status: 1 for the current one, 0 for the others.",
            labels=["status"],
        )
        for name in NODE_STATUSES:
            status.add_metric([name], 1 if s.get("status") == name else 0)
        yield status
        converged = GaugeMetricFamily(
            "gossipkv_converged", "1 when every member's view agrees, else 0."
        )
        converged.add_metric([], 1 if s.get("converged") else 0)
        yield converged
        for field, (suffix, text) in GAUGES.items():
            if field in s:
                yield GaugeMetricFamily(f"gossipkv_{suffix}", text, value=float(s[field] or 0))
        members = GaugeMetricFamily(
            "gossipkv_members", "Members this node sees, by status.", labels=["status"]
        )
        for status, count in sorted((s.get("members_by_status") or {}).items()):
            members.add_metric([str(status)], count)
        yield members
        owned = GaugeMetricFamily(
            "gossipkv_partitions_owned",
            "Partitions each member holds a replica of (any position in the preference list), "
            "in this node's table.",
            labels=["member"],
        )
        for member, count in sorted((s.get("partitions_owned") or {}).items()):
            owned.add_metric([str(member)], count)
        yield owned
        for field, text in COUNTERS.items():
            if field in s:
                yield CounterMetricFamily(f"gossipkv_{field}", text, value=float(s[field] or 0))
        for field, (label, text) in LABELLED_COUNTERS.items():
            family = CounterMetricFamily(f"gossipkv_{field}", text, labels=[label])
            for key, count in sorted((s.get(field) or {}).items()):
                family.add_metric([str(key)], count)
            yield family
        latency = HistogramMetricFamily(
            "gossipkv_request_duration_seconds",
            "Latency of reads and writes this node coordinated (get, put), of replica answers "
            "to them (replica) and of gossip exchanges (gossip_round: syn to syn-ack).",
            labels=["op"],
        )
        histograms = s.get("latency") or {}
        for op in LATENCY_OPS:
            snap = histograms.get(op)
            if not isinstance(snap, dict):
                continue
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip([*snap["buckets"], math.inf], snap["counts"], strict=True):
                cumulative += int(count)
                buckets.append((_go_float(bound), cumulative))
            latency.add_metric([op], buckets, sum_value=float(snap["sum"]))
        yield latency


def prometheus_text(stats: dict[str, Any]) -> str:
    """The snapshot in the Prometheus text exposition format (``gossipkv_*`` metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(stats))
    return generate_latest(registry).decode("utf-8")


def _fmt_map(value: Any) -> str:
    if not value:
        return "-"
    return "  ".join(f"{k}:{v}" for k, v in sorted(value.items()))


def stats_table(stats: dict[str, Any]) -> Table:
    """A readable two-column table of the snapshot, grouped like the dashboard."""
    table = Table(
        title=f"statistics of {stats.get('name')} ({stats.get('address')})",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        show_header=False,
    )
    table.add_column("metric", style="bold", no_wrap=True)
    table.add_column("value")
    epoch = stats.get("table_epoch")
    rows: list[tuple[str, str]] = [
        ("cluster", str(stats.get("cluster"))),
        ("status", f"{stats.get('status')} (generation {stats.get('generation')})"),
        ("leader", str(stats.get("leader") or "(none)")),
        ("converged", "yes" if stats.get("converged") else "no"),
        ("members", _fmt_map(stats.get("members_by_status"))),
        (
            "partition table",
            "none yet"
            if epoch is None
            else f"epoch {epoch[0]}.{epoch[1]}: {stats.get('partitions')} partitions x "
            f"N={stats.get('replicas')}",
        ),
        ("partitions owned", _fmt_map(stats.get("partitions_owned"))),
        (
            "connections",
            f"{stats.get('connections')} (members {stats.get('peer_connections', '-')}, "
            f"clients {stats.get('client_connections', '-')})",
        ),
        (
            "loop lag",
            f"last {float(stats.get('last_loop_lag') or 0) * 1000:.1f} ms  "
            f"max {float(stats.get('max_loop_lag') or 0) * 1000:.1f} ms",
        ),
    ]
    rows += [
        (field.replace("_", " "), str(stats.get(field))) for field in COUNTERS if field in stats
    ]
    rows += [
        ("hints pending", str(stats.get("hints_pending"))),
        ("storage keys", str(stats.get("storage_keys"))),
        (
            "tombstones",
            f"pending {stats.get('tombstones_pending', 0)}, grace "
            + (
                f"{stats['tombstone_grace']:g}s"
                if stats.get("tombstone_grace") is not None
                else "none (kept)"
            ),
        ),
    ]
    rows += [(field.replace("_", " "), _fmt_map(stats.get(field))) for field in LABELLED_COUNTERS]
    for op, (p50, p99) in percentiles(stats).items():
        count = (stats.get("latency") or {}).get(op, {}).get("count", 0)
        rows.append(
            (
                f"{op.replace('_', ' ')} latency",
                f"p50 {fmt_ms(p50)} ms  p99 {fmt_ms(p99)} ms  ({count})",
            )
        )
    for name, value in rows:
        table.add_row(name, value)
    return table
