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
