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

from gossipkv import NodeStatistics, Statistic

#: What each statistic is (kind, unit, help text, metric name), in the order tables show them.
DECLARATIONS = NodeStatistics.declarations()
#: Statistics the Prometheus exposition renders its own way (identity and state, not numbers).
_IDENTITY = ("name", "address", "cluster", "leader", "status")
#: Statistics the table shows in its first, composed rows; every other one gets a row of its own.
COMPOSED = (
    "name", "address", "cluster", "status", "generation", "leader", "converged",
    "members_by_status", "table_epoch", "partitions", "replicas", "partitions_owned",
    "connections", "peer_connections", "client_connections", "max_loop_lag", "last_loop_lag",
    "tombstone_grace", "tombstones_pending", "latency",
)  # fmt: skip


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
        for d in DECLARATIONS:
            if d.name not in _IDENTITY:
                yield from self._families(d, s.get(d.name))

    @staticmethod
    def _families(d: Statistic, value: Any) -> Iterator[Metric]:
        """The metric family of one declared statistic (none for ``info`` and absent values)."""
        name = f"gossipkv_{d.metric}"
        if d.kind in ("counter", "gauge") and value is not None:
            kind = CounterMetricFamily if d.kind == "counter" else GaugeMetricFamily
            yield kind(name, d.help, value=float(value))
        elif d.kind in ("counters", "gauges"):
            # A map nothing has counted yet still has its family (no sample).
            family = (CounterMetricFamily if d.kind == "counters" else GaugeMetricFamily)(
                name, d.help, labels=[d.label]
            )
            for key, count in sorted((value or {}).items()):
                family.add_metric([str(key)], count)
            yield family
        elif d.kind == "histograms":
            hist = HistogramMetricFamily(name, d.help, labels=[d.label])
            for op in LATENCY_OPS:
                snap = (value or {}).get(op)
                if not isinstance(snap, dict):
                    continue
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip([*snap["buckets"], math.inf], snap["counts"], strict=True):
                    cumulative += int(count)
                    buckets.append((_go_float(bound), cumulative))
                hist.add_metric([op], buckets, sum_value=float(snap["sum"]))
            yield hist


def prometheus_text(stats: dict[str, Any]) -> str:
    """The snapshot in the Prometheus text exposition format (``gossipkv_*`` metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(stats))
    return generate_latest(registry).decode("utf-8")


def _fmt_map(value: Any) -> str:
    if not value:
        return "-"
    return "  ".join(f"{k}:{v}" for k, v in sorted(value.items()))


def _fmt_value(kind: str, unit: str, value: Any) -> str:
    if kind in ("counters", "gauges") or isinstance(value, dict):
        return _fmt_map(value)
    if isinstance(value, list):  # transfers in flight
        return f"{len(value)} in flight" if value else "-"
    if unit == "seconds" and isinstance(value, (int, float)):
        return f"{value:g} s"
    if unit == "bytes":
        return f"{value} B"
    return str(value) if value != "" else "-"


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
    rows.append(
        (
            "tombstones",
            f"pending {stats.get('tombstones_pending', 0)}, grace "
            + (
                f"{stats['tombstone_grace']:g}s"
                if stats.get("tombstone_grace") is not None
                else "none (kept)"
            ),
        )
    )
    rows += [
        (d.title, _fmt_value(d.kind, d.unit, stats[d.name]))
        for d in DECLARATIONS
        if d.name not in COMPOSED and d.name in stats
    ]
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
