"""``gossipkv bench kv`` against three real peer processes on loopback (shape only, no timings)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import gossipkv

from ._peers import Peers, cli, eventually, free_ports, loads

pytestmark = pytest.mark.proc

NAMES = ["n1", "n2", "n3"]
SUMMARY_KEYS = {"count", "p50_ms", "p95_ms", "p99_ms", "max_ms"}


async def test_bench_kv_json_with_echo_baseline(peers: Peers) -> None:
    ports = free_ports(3)
    peers.start("n1", ports[0])
    for name, port in zip(NAMES[1:], ports[1:], strict=True):
        peers.start(name, port, seeds=["n1"])
    addrs = [peers.addr[n] for n in NAMES]

    async def table_ready() -> Any:
        # A quorum write through each peer succeeds once every peer holds a table of all three:
        # bench kv probes every peer, so one peer ready is not enough.
        try:
            for addr in addrs:
                async with gossipkv.open_client(
                    [addr], connect_timeout=0.5, request_timeout=2.0
                ) as client:
                    ring: Any = await client.ring()
                    owners = ring.get("owners") or []
                    if not owners or {m for row in owners for m in row} != set(NAMES):
                        return False
                    await client.put(f"bench-ready-{addr}", "yes")
        except (gossipkv.ClusterNotReady, gossipkv.Unavailable, gossipkv.QuorumNotReached):
            return False
        except gossipkv.TransportError:
            return False  # the peers are still starting
        return True

    await eventually(
        table_ready,
        within=45,
        what="a table of all three at every peer (a put through each succeeds)",
        peers=peers,
    )

    args = ["bench", "kv"]
    for addr in addrs:
        args += ["--peer", addr]
    args += [
        "--duration", "2",
        "--concurrency", "4",
        "--ratio", "50:50",
        "--keys", "100",
        "--value-size", "100",
        "--json",
        "--baseline-echo",
    ]  # fmt: skip
    out = await trio.to_thread.run_sync(lambda: cli(*args, timeout=120))
    assert out.returncode == 0, out.stderr
    doc = loads(out.stdout)

    expected = {"ops", "ops_per_s", "errors", "get", "put", "echo", "ratio_to_echo"}
    assert expected <= set(doc)
    assert doc["ops"] > 0
    assert doc["errors"] == 0, doc["errors_by_type"]
    for op in ("get", "put"):
        assert set(doc[op]) == SUMMARY_KEYS
        assert doc[op]["count"] > 0
        assert doc[op]["p50_ms"] <= doc[op]["p95_ms"] <= doc[op]["p99_ms"] <= doc[op]["max_ms"]
    assert doc["get"]["count"] + doc["put"]["count"] == doc["ops"]
    echo_keys = SUMMARY_KEYS | {"ops_per_s", "errors"}
    assert echo_keys <= set(doc["echo"])
    assert doc["echo"]["count"] > 0 and doc["echo"]["errors"] == 0
    assert doc["ratio_to_echo"] > 0


def test_bench_kv_bad_arguments_fail_with_one_line() -> None:
    [port] = free_ports(1)
    cases = [
        (["--peer", "no-port"], "--peer must be HOST:PORT"),
        (["--peer", f"127.0.0.1:{port}", "--ratio", "fifty"], "--ratio must be GET:PUT"),
        (["--peer", f"127.0.0.1:{port}", "--duration", "1"], "unreachable"),
    ]
    for extra, message in cases:
        out = cli("bench", "kv", *extra, "--json")
        assert out.returncode != 0
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], out.stderr
        assert out.stdout == ""
