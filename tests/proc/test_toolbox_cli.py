"""The operator's toolbox (issue 16) through real processes: one 1-peer cluster serves every
check, so the tier pays for one start. Its data dir is preloaded with 100,000 keys through the
storage API before it starts (writing them through the data path would take minutes)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from gossipkv_cli._app import app
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

import gossipkv
from gossipkv.storage import DVVSet, Entry, Sibling, open_storage

from ._peers import ENV, Peers, cli, eventually, free_ports, loads, members

pytestmark = pytest.mark.proc

PRELOADED = 100_000
#: Long keys, so holding all of them (about 25 MiB in a Python list) is far more than a streamed
#: scan's page plus what the allocator keeps: a scan that collected every key would fail.
PAD = "-" * 200
#: Runs the CLI and prints its peak resident set size (VmHWM, KiB) on stderr at exit.
HWM = """
import atexit, runpy, sys
def report():
    with open("/proc/self/status") as f:
        hwm = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    print("HWM", hwm, file=sys.stderr)
atexit.register(report)
sys.argv = ["gossipkv", *sys.argv[1:]]
runpy.run_module("gossipkv_cli", run_name="__main__")
"""


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


async def run_cli(*args: str) -> Ran:
    """The CLI in this process (in a worker thread: each command runs its own ``trio.run``),
    for the commands that install no signal handler: a real peer answers, without paying for
    a Python start per command."""

    def invoke() -> Ran:
        res = CliRunner().invoke(app, list(args))
        return Ran(res.exit_code, res.stdout, res.stderr)

    return await trio.to_thread.run_sync(invoke)


async def preload(data_dir: Path, n: int) -> None:
    """``n`` keys ``pre:0000000--…``.. written straight into a peer's replica storage."""
    async with open_storage(data_dir / "data", fsync="none") as engine:

        async def writer(start: int) -> None:
            for i in range(start, n, 64):
                value = Sibling(i.to_bytes(4, "big"))
                await engine.put(f"pre:{i:07d}{PAD}", DVVSet((Entry("preload/1/0", 1, (value,)),)))

        async with trio.open_nursery() as nursery:
            for start in range(64):
                nursery.start_soon(writer, start)


async def solo(peers: Peers) -> str:
    [port] = free_ports(1)
    await preload(peers.tmp / "solo", PRELOADED)
    # The file names another port and data dir: the flags win; its [gossip] table stands.
    config = peers.tmp / "solo.toml"
    config.write_text(
        'listen = "127.0.0.1:1"\ndata_dir = "/nonexistent"\ntombstone_grace = "inf"\n'
        "[gossip]\nfanout = 2\n[limits]\nmax_watches = 100\n"
    )
    [metrics_port] = free_ports(1)
    peers.start(
        "solo",
        port,
        data_dir=str(peers.tmp / "solo"),
        config=str(config),
        metrics_listen=f"127.0.0.1:{metrics_port}",
    )
    peers.metrics = f"127.0.0.1:{metrics_port}"  # type: ignore[attr-defined]
    addr = peers.addr["solo"]

    async def writable() -> Any:
        doc = await members(addr)
        return (
            doc is not None and (await run_cli("put", "probe", "x", "--peer", addr)).returncode == 0
        )

    await eventually(writable, within=30, what="a writable 1-peer cluster", peers=peers)
    return addr


async def test_one_peer_cluster_through_the_cli(peers: Peers) -> None:
    addr = solo_addr = await solo(peers)

    # put twice: two siblings, and a hint; put --replace: one value.
    assert (await run_cli("put", "k", "a", "--peer", addr)).returncode == 0
    twice = await run_cli("put", "k", "b", "--peer", addr)
    assert "k: 2 siblings" in twice.stdout, twice.stdout
    assert "put --replace k VALUE" in twice.stderr
    replaced = await run_cli("put", "k", "c", "--replace", "--peer", addr, "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert loads(replaced.stdout)["values"] == ["c"]
    got = loads((await run_cli("get", "k", "--peer", addr, "--json")).stdout)
    assert got["values"] == ["c"]

    # status says what a 1-peer cluster really runs at.
    status = await run_cli("status", "--peer", addr)
    assert status.returncode == 0, status.stderr
    assert "quorum: N=3 R=2 W=2   effective N=1 R=1 W=1" in status.stdout, status.stdout
    sdoc = loads((await run_cli("status", "--peer", addr, "--json")).stdout)
    assert (sdoc["n"], sdoc["w"], sdoc["n_effective"], sdoc["w_effective"]) == (3, 2, 1, 1)

    # Piped, nothing is cut: the whole address and generation, no ellipsis.
    doc = loads((await run_cli("members", "--peer", addr, "--json")).stdout)
    [me] = doc["members"]
    for command in ("members", "status"):
        out = (await run_cli(command, "--peer", solo_addr)).stdout
        assert me["address"] in out and str(me["generation"]) in out, out
        assert "…" not in out

    # --- keys: 100,000 of them, streamed, with the client's memory flat ------------------------
    def hwm_kib(*args: str) -> tuple[subprocess.CompletedProcess[str], int]:
        out = subprocess.run(
            [sys.executable, "-c", HWM, *args],
            capture_output=True, text=True, timeout=120, env=ENV, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        return out, int(out.stderr.split("HWM")[-1].split()[0])

    # 1,000 keys (ten pages): the client's baseline, pages and all.
    baseline, base_kib = await trio.to_thread.run_sync(
        lambda: hwm_kib("keys", "pre:0099", "--page", "100", "--peer", addr)
    )
    assert baseline.returncode == 0 and len(baseline.stdout.split()) == 1000, baseline.stderr
    # The same command line shape as the baseline (typer's argument handling has its own cost).
    listed, all_kib = await trio.to_thread.run_sync(lambda: hwm_kib("keys", "pre:", "--peer", addr))
    assert listed.returncode == 0, listed.stderr
    assert sorted(listed.stdout.split()) == [f"pre:{i:07d}{PAD}" for i in range(PRELOADED)]
    # A streamed scan holds one page: its peak is the baseline's plus what the allocator keeps
    # after a thousand pages (measured about 6 MiB, flat from then on), far below what the
    # 100,000 keys cost held at once (each a str object plus a list slot).
    held_kib = PRELOADED * (sys.getsizeof(f"pre:{0:07d}{PAD}") + 8) // 1024
    assert all_kib - base_kib < held_kib // 2, (base_kib, all_kib, held_kib)
    some = await run_cli("keys", "pre:00012", "--json", "--peer", addr)
    assert sorted(json.loads(some.stdout)) == [f"pre:{i:07d}{PAD}" for i in range(1200, 1300)]
    assert (await run_cli("keys", "k", "--peer", addr)).stdout.split() == ["k"]
    assert (await run_cli("delete", "k", "--peer", addr)).returncode == 0
    assert (await run_cli("keys", "k", "--peer", addr)).stdout == ""  # deleted: not listed

    # --- tags, config show, log-level, ping ------------------------------------------------
    tags = await run_cli("tags", "set", "role=web", "zone=a", "--peer", addr, "--json")
    assert loads(tags.stdout) == {"name": "solo", "tags": {"role": "web", "zone": "a"}}
    tags = await run_cli("tags", "delete", "zone", "--peer", addr)
    assert tags.stdout.strip() == "solo tags: role=web", tags.stdout
    assert (await run_cli("tags", "set", "novalue", "--peer", addr)).stderr.startswith(
        "error: tags must be"
    )
    config = loads((await run_cli("config", "show", "--peer", addr, "--json")).stdout)
    assert config["node"]["name"] == "solo" and config["kv"]["w"] == 2
    assert config["node"]["data_dir"] == str(peers.tmp / "solo")  # the flag, not the file
    assert config["node"]["listen"] == addr
    assert config["gossip"]["fanout"] == 2 and config["limits"]["max_watches"] == 100  # file
    assert (
        config["kv"]["tombstone_grace"] == "inf"
        and config["gossip"]["probe_interval"] == gossipkv.GossipConfig().probe_interval
    )
    ping = await run_cli("ping", "--peer", addr, "--json")
    assert ping.returncode == 0 and loads(ping.stdout) == {"self": "solo", "members": []}
    bad = await run_cli("log-level", "chatty", "--peer", addr)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown log level 'chatty'")

    # --- monitor: a log-level change is a line in the stream -----------------------------------
    out_path = peers.tmp / "monitor.out"
    monitor = _popen_to(out_path, "-m", "gossipkv_cli", "monitor", "--json", "--peer", addr)
    try:

        async def subscribed() -> bool:
            return "monitoring" in (peers.tmp / "monitor.out.err").read_text()

        await eventually(subscribed, within=20, what="the monitor subscribed", peers=peers)
        level = await run_cli("log-level", "debug", "--peer", addr, "--json")
        changed = [loads(level.stdout)]

        async def seen_in_monitor() -> Any:
            text = out_path.read_text()
            return "log level set to debug" in text and text

        text = await eventually(seen_in_monitor, within=20, what="the monitor line", peers=peers)
        assert changed[0] == {"peer": addr, "previous": "info", "level": "debug"}
        line = json.loads(next(ln for ln in text.splitlines() if "log level set" in ln))
        assert line["kind"] == "log" and line["level"] == "warning"
        monitor.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(lambda: monitor.wait(timeout=20))
        err = (peers.tmp / "monitor.out.err").read_text()
        assert monitor.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()

    # --- /metrics, parsed as Prometheus parses it; stats show p50/p99 ------------------------
    metrics = peers.metrics  # type: ignore[attr-defined]
    async with gossipkv.open_client([addr]) as client:
        for i in range(20):
            await client.put(f"m{i}", "v")
            await client.get(f"m{i}")
    text = await trio.to_thread.run_sync(lambda: _scrape(f"http://{metrics}/metrics"))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    hist = families["gossipkv_request_duration_seconds"]
    assert hist.type == "histogram"
    counts = {s.labels["op"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert set(counts) == {"get", "put", "replica", "gossip_round"}
    assert counts["put"] >= 20 and counts["get"] >= 20
    buckets = [s for s in hist.samples if s.name.endswith("_bucket") and s.labels["op"] == "put"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == counts["put"]
    assert families["gossipkv_is_leader"].samples[0].value == 1
    assert families["gossipkv_kv_puts"].samples[0].value >= 20
    # No series is labelled with something that changes with the leader or the node's status.
    for family in families.values():
        for sample in family.samples:
            assert "leader" not in sample.labels, sample
    status = {s.labels["status"]: s.value for s in families["gossipkv_node_status"].samples}
    assert status["up"] == 1 and sum(status.values()) == 1
    assert "replica counts" in text or "holds a replica of" in text  # partitions_owned help

    stats = await run_cli("stats", "--peer", addr)
    line = next(ln for ln in stats.stdout.splitlines() if "put latency" in ln)
    assert re.search(r"p50 \d+\.\d+ ms  p99 \d+\.\d+ ms", line), line

    # The same port again: one line, and nothing starts.
    [port] = free_ports(1)
    busy = cli("peer", "--listen", f"127.0.0.1:{port}", "--metrics-listen", metrics)
    assert busy.returncode == 1
    assert busy.stderr.strip().splitlines() == [
        f"error: cannot listen on {metrics} for metrics: Address already in use"
    ]


def _popen_to(path: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python ARGS`` with its stdout written to ``path`` and its stderr to ``path.err``."""
    with open(path, "wb") as out, open(f"{path}.err", "wb") as err:
        return subprocess.Popen(
            [sys.executable, *args], stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=ENV
        )


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        body: bytes = response.read()
        return body.decode()


async def test_backup_wipe_restore_keeps_siblings_and_clocks(peers: Peers) -> None:
    [port] = free_ports(1)
    data = peers.tmp / "a"
    peers.start("a", port, data_dir=str(data))
    addr = peers.addr["a"]

    async def writable() -> Any:
        return (await run_cli("put", "probe", "x", "--peer", addr)).returncode == 0

    await eventually(writable, within=30, what="a writable 1-peer cluster", peers=peers)
    async with gossipkv.open_client([addr]) as client:
        await client.put("cart", "apple")
        await client.put("cart", "pear")  # no context: a sibling
        for i in range(300):
            await client.put(f"k{i:03d}", i)
        before = await client.get("cart")
        gone = await client.get("probe")
        await client.delete("probe", context=gone.context)
    assert sorted(before.values) == ["apple", "pear"]

    dump = peers.tmp / "dump"
    out = await run_cli("backup", str(dump), "--peer", addr, "--json")
    assert out.returncode == 0, out.stderr
    assert loads(out.stdout)["keys"] == 301  # the deleted key is not dumped
    again = await run_cli("backup", str(dump), "--peer", addr)
    assert again.returncode == 1 and "already holds a backup" in again.stderr

    # Wipe: the same member on an empty data dir.
    peers.signal("a", signal.SIGKILL)
    peers.procs["a"].wait(timeout=10)
    await trio.to_thread.run_sync(lambda: shutil.rmtree(data))
    peers.start("a", port, data_dir=str(data))
    await eventually(writable, within=30, what="the wiped peer writable", peers=peers)

    refused = await run_cli("restore", str(dump), "--peer", addr)  # it holds "probe" again
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "error: the cluster already holds keys (e.g. 'probe'): restore merges into what is "
        "there; use --force to do it anyway"
    ]
    restored = await run_cli("restore", str(dump), "--force", "--peer", addr, "--json")
    assert restored.returncode == 0, restored.stderr
    assert loads(restored.stdout)["restored"] == 301
    async with gossipkv.open_client([addr]) as client:
        after = await client.get("cart")
        assert sorted(after.values) == ["apple", "pear"]  # siblings stay siblings
        assert after.context == before.context  # the very same clock
        assert (await client.get("k123")).values == [123]
        # A write with the restored context replaces both siblings, as before the wipe.
        merged = await client.put("cart", "apple+pear", context=after.context)
        assert merged.values == ["apple+pear"]
