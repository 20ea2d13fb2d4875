"""The Grafana dashboard in examples/ names only metrics a peer exports."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import trio
from gossipkv_cli._stats import prometheus_text
from prometheus_client.parser import text_string_to_metric_families

from gossipkv import GossipConfig, open_node

DASHBOARD = Path(__file__).parents[2] / "examples" / "grafana-dashboard.json"


async def test_every_metric_the_dashboard_queries_is_exported() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"gossipkv_[a-z_]+", e)}
    async with open_node(listen="127.0.0.1:0", config=GossipConfig(gossip_interval=0.05)) as n:
        with trio.fail_after(30):
            await n.wait_ready()
        text = prometheus_text(asdict(n.statistics()))
    exported: set[str] = set()
    for family in text_string_to_metric_families(text):
        # A labelled counter nothing has counted yet has a family and no sample.
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
        exported |= {family.name + x for x in suffixes.get(family.type, [""])}
    assert wanted, exprs
    assert wanted <= exported, sorted(wanted - exported)
