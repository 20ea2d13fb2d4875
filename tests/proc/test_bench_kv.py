"""``gossipkv bench kv`` against three real peer processes on loopback (shape only, no timings)."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
import trio

import gossipkv

from ._peers import ENV, Peers, cli, eventually, free_ports, loads

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
    # The bench deletes what it wrote: no bench:* key is left with a value.
    assert doc["keys_cleaned"] > 0 and doc["interrupted"] is False
    assert await live_bench_keys(addrs[0], 100) == []

    # GOSSIPKV_PEER names the peer, as for every other command; a peer's refusal shows its
    # words (W=5 with N=3), not just "RemoteError".
    env_run = await trio.to_thread.run_sync(
        lambda: cli(
            "bench", "kv", "--duration", "0.3", "--ratio", "0:1", "--keys", "10", "--w", "5",
            "--json", env={"GOSSIPKV_PEER": addrs[1]},
        )
    )  # fmt: skip
    assert env_run.returncode == 0, env_run.stderr
    env_doc = loads(env_run.stdout)
    assert env_doc["config"]["peers"] == [addrs[1]]
    assert env_doc["errors"] > 0 and env_doc["ops"] == 0
    [(kind, messages)] = env_doc["error_messages"].items()
    assert kind == "InvalidArgument(bad_request)" and "N=3" in messages[0], env_doc

    # Ctrl-C stops the load, still deletes the keys, and says so in one line (exit 130).
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossipkv_cli", "bench", "kv", "--peer", addrs[0],
         "--duration", "120", "--keys", "20", "--ratio", "0:1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    try:

        async def writing() -> Any:
            return await live_bench_keys(addrs[0], 20)

        await eventually(writing, within=30, what="bench keys written", peers=peers)
        proc.send_signal(signal.SIGINT)
        out, err = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: interrupted after"), lines
    assert "bench keys deleted" in lines[0] and b"Traceback" not in err
    assert await live_bench_keys(addrs[0], 20) == []


async def live_bench_keys(addr: str, keys: int) -> list[str]:
    """The bench:* keys among the first ``keys`` that still hold a value."""
    async with gossipkv.open_client([addr], request_timeout=5.0) as client:
        names = [f"bench:{i:08d}" for i in range(keys)]
        return [k for k in names if (await client.get(k)).values]


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
