"""The operator's toolbox through the public API over loopback TCP (issue 16): effective
configuration, run-time log level, ping, key pages, monitor."""

from __future__ import annotations

import logging

import pytest
import trio

import gossipkv
from gossipkv import GossipConfig, KVConfig, open_client, open_node

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=2.0, fanout=2)


async def test_config_log_level_ping_keys_and_monitor() -> None:
    async with (
        open_node(name="a", listen="127.0.0.1:0", config=FAST, kv=KVConfig(r=1, w=1)) as a,
        open_node(name="b", listen="127.0.0.1:0", seeds=[a.address], config=FAST) as b,
    ):
        with trio.fail_after(30):
            await a.wait_until(lambda n: sum(m.status == "up" for m in n.members()) == 2)
            await a.wait_ready()
            await b.wait_ready()
        async with open_client([a.address]) as client:
            cfg = await client.config()
            assert cfg["node"]["name"] == "a" and cfg["kv"]["r"] == 1  # type: ignore[index]
            assert cfg["gossip"]["fanout"] == 2  # type: ignore[index]
            assert cfg["kv"]["tombstone_grace"] == 3600.0  # type: ignore[index]
            assert set(cfg) == {"node", "gossip", "kv", "limits", "storage_limits"}

            level = await client.set_log_level("debug")
            assert level["level"] == "debug"
            assert logging.getLogger("gossipkv").getEffectiveLevel() == logging.DEBUG
            with pytest.raises(gossipkv.RemoteError, match="unknown log level"):
                await client.set_log_level("chatty")
            await client.set_log_level(str(level["previous"]))

            ping = await client.ping()
            [row] = ping["members"]  # type: ignore[misc]
            assert row["name"] == "b" and row["error"] is None and row["rtt_ms"] >= 0

            for i in range(250):
                await client.put(f"k:{i:04d}", i)
            await client.put("gone", 1)
            got = await client.get("gone")
            await client.delete("gone", context=got.context)
            ring = await client.ring()
            owners: list[list[str]] = ring["owners"]  # type: ignore[assignment]
            seen: list[str] = []
            for p, row_owners in enumerate(owners):
                if "a" not in row_owners:
                    continue
                after = ""
                while True:
                    page = await client.keys_page(p, after=after, limit=7, prefix="k:")
                    keys: list[str] = page["keys"]  # type: ignore[assignment]
                    assert len(keys) <= 7 and keys == sorted(keys)
                    seen += keys
                    if page["next"] is None:
                        break
                    after = str(page["next"])
            assert sorted(seen) == [f"k:{i:04d}" for i in range(250)]  # a owns every partition
            with pytest.raises(gossipkv.RemoteError, match="partition"):
                await client.keys_page(10_000)
            with pytest.raises(gossipkv.RemoteError, match="limit"):
                await client.keys_page(0, limit=0)

            latency = a.statistics().latency
            assert latency["put"]["count"] >= 251 and latency["replica"]["count"] >= 251
            assert latency["gossip_round"]["count"] > 0
            p99 = gossipkv.histogram_quantile(latency["put"], 0.99)
            assert p99 is not None and p99 > 0

            async with client.monitor("info") as lines:
                logging.getLogger("gossipkv.test").warning("hello from the test")
                with trio.fail_after(10):
                    async for kind, lvl, line in lines:
                        if "hello from the test" in line:
                            assert (kind, lvl) == ("log", "warning")
                            break
            with pytest.raises(gossipkv.RemoteError, match="unknown log level"):
                async with client.monitor("loud"):
                    pass


def test_histogram_quantile_interpolates_within_a_bucket() -> None:
    from gossipkv._histogram import BUCKETS, LatencyHistogram

    h = LatencyHistogram()
    assert gossipkv.histogram_quantile(h.snapshot(), 0.5) is None
    for _ in range(100):
        h.observe(0.003)  # the (0.0025, 0.005] bucket
    snap = h.snapshot()
    assert snap["count"] == 100 and snap["buckets"] == list(BUCKETS)
    p50 = gossipkv.histogram_quantile(snap, 0.5)
    assert p50 is not None and 0.0025 < p50 <= 0.005
    h.observe(60.0)  # beyond the last bound: the unbounded bucket
    assert gossipkv.histogram_quantile(h.snapshot(), 1.0) == BUCKETS[-1]
    assert gossipkv.histogram_quantile({"buckets": "x"}, 0.5) is None
