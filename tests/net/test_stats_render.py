"""``gossipkv stats`` rendering of the connection statistics and the refusal map."""

from __future__ import annotations

from gossipkv_cli._stats import prometheus_text, stats_table
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

STATS = {
    "name": "n1",
    "address": "127.0.0.1:7400",
    "connections": 5,
    "peer_connections": 3,
    "client_connections": 2,
    "refusals": {"idle_timeout": 3, "source_limit": 1},
}


def test_prometheus_exposes_refusals_by_reason_and_connection_gauges() -> None:
    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(STATS))}
    refusals = families["gossipkv_refusals"]
    assert refusals.type == "counter"
    assert {s.labels["reason"]: s.value for s in refusals.samples} == {
        "idle_timeout": 3.0,
        "source_limit": 1.0,
    }
    assert {s.name for s in refusals.samples} == {"gossipkv_refusals_total"}
    assert families["gossipkv_peer_connections"].samples[0].value == 3.0
    assert families["gossipkv_client_connections"].samples[0].value == 2.0
    assert families["gossipkv_connections"].samples[0].value == 5.0


def test_the_table_shows_connections_by_kind_and_refusals() -> None:
    console = Console(record=True, width=120, color_system=None)
    console.print(stats_table(STATS))
    out = console.export_text()
    assert "5 (members 3, clients 2)" in out
    assert "idle_timeout:3  source_limit:1" in out


def _full_snapshot() -> dict[str, object]:
    from dataclasses import asdict

    from gossipkv import NodeStatistics

    stats = NodeStatistics(
        "n1", "h:1", "c", 1, "up", "n1", True, {"up": 1}, *([3] * 9), {"bad_cbor": 1}, {}, 2,
        0.5, 0.25, [1, 2], 64, 3, {"n1": 64}, *([5] * 9), {"Timeout": 1}, 12,
    )  # fmt: skip
    return asdict(stats)


def test_every_declared_statistic_has_a_row_in_the_table() -> None:
    from gossipkv_cli._stats import COMPOSED, DECLARATIONS

    declared = {d.name for d in DECLARATIONS}
    assert set(COMPOSED) <= declared
    console = Console(record=True, width=200, color_system=None)
    console.print(stats_table(_full_snapshot()))
    out = console.export_text()
    missing = [d.name for d in DECLARATIONS if d.name not in COMPOSED and d.title not in out]
    assert not missing


def test_prometheus_help_and_type_come_from_the_declarations() -> None:
    from gossipkv import NodeStatistics

    text = prometheus_text(_full_snapshot())
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for d in NodeStatistics.declarations():
        if d.kind == "info":
            continue
        family = families[f"gossipkv_{d.metric}"]
        expected = {"counter": "counter", "counters": "counter", "histograms": "histogram"}
        assert family.type == expected.get(d.kind, "gauge"), d.name
        assert family.documentation == d.help, d.name
    # Metric names people's dashboards and alerts use stay the same.
    for stable in (
        "gossipkv_kv_gets", "gossipkv_max_loop_lag_seconds", "gossipkv_under_replicated_partitions",
        "gossipkv_members", "gossipkv_partitions_owned", "gossipkv_request_duration_seconds",
        "gossipkv_node_status", "gossipkv_node_info", "gossipkv_is_leader", "gossipkv_converged",
    ):  # fmt: skip
        assert stable in families, stable
