"""``gossipkv stats`` against a real peer: the table, --json, and --prometheus (parsed back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ._peers import Peers, cli, eventually, free_ports, loads, members

pytestmark = pytest.mark.proc


async def test_stats_table_json_and_prometheus(peers: Peers, tmp_path: Path) -> None:
    (port,) = free_ports(1)
    peers.start("s1", port)
    addr = peers.addr["s1"]

    async def up() -> Any:
        doc = await members(addr)
        return doc is not None and [m["status"] for m in doc["members"]] == ["up"]

    await eventually(up, within=30, what="s1 up", peers=peers)
    # One write so the data-path counters are non-zero.
    put = cli("put", "k", "v", "--w", "1", "--peer", addr)
    assert put.returncode == 0, put.stderr

    out = cli("stats", "--json", "--peer", addr)
    assert out.returncode == 0, out.stderr
    doc = loads(out.stdout)
    assert doc["name"] == "s1" and doc["members_by_status"] == {"up": 1}
    assert doc["kv_puts"] >= 1
    assert doc["anti_entropy_keys_repaired"] == 0  # one peer: no other owner to compare with

    table = cli("stats", "--peer", addr)
    assert table.returncode == 0, table.stderr
    assert "statistics of s1" in table.stdout and "kv puts" in table.stdout

    prom = cli("stats", "--prometheus", "--peer", addr)
    assert prom.returncode == 0, prom.stderr
    families = {f.name: f for f in text_string_to_metric_families(prom.stdout)}
    assert all(name.startswith("gossipkv_") for name in families), sorted(families)
    assert families["gossipkv_kv_puts"].type == "counter"
    assert families["gossipkv_kv_puts"].samples[0].name == "gossipkv_kv_puts_total"
    assert families["gossipkv_kv_puts"].samples[0].value >= 1
    members_by = {s.labels["status"]: s.value for s in families["gossipkv_members"].samples}
    assert members_by == {"up": 1.0}
    owned = {s.labels["member"]: s.value for s in families["gossipkv_partitions_owned"].samples}
    assert owned == {"s1": float(doc["partitions"])}, owned
    info = families["gossipkv_node_info"].samples[0]
    assert info.labels["name"] == "s1" and info.labels["cluster"] == "gossipkv"
    assert families["gossipkv_dropped_frames"].type == "counter"
    assert families["gossipkv_max_loop_lag_seconds"].type == "gauge"
    repaired = families["gossipkv_anti_entropy_keys_repaired"]
    assert repaired.type == "counter" and repaired.samples[0].value == 0

    both = cli("stats", "--json", "--prometheus", "--peer", addr)
    assert both.returncode == 1 and "exclusive" in both.stderr
