"""Real peer processes on loopback, driven and inspected through the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from gossipkv_cli._render import members_doc

from ._peers import (
    ENV,
    Peers,
    children_of,
    cli,
    eventually,
    free_ports,
    is_running,
    loads,
    members,
    view,
)

pytestmark = pytest.mark.proc

NAMES = ["n1", "n2", "n3", "n4", "n5"]


async def test_five_peers_leader_failover_restart_and_leave(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(6)
    peers.start("n1", ports[0], data_dir=str(tmp_path / "n1"))
    for name, port in zip(NAMES[1:], ports[1:5], strict=True):
        peers.start(name, port, seeds=["n1"], data_dir=str(tmp_path / name))

    async def all_up() -> Any:
        docs = [await members(peers.addr[n]) for n in NAMES]
        ok = all(
            d is not None
            and d["leader"] == "n1"
            and sorted(m["name"] for m in d["members"] if m["status"] == "up") == NAMES
            for d in docs
        )
        return docs if ok else None

    await eventually(all_up, within=30, what="5 peers up with leader n1", peers=peers)

    # The CLI shows the same thing, in the documented JSON shape.
    out = cli("members", "--peer", peers.addr["n3"], "--json")
    assert out.returncode == 0, out.stderr
    doc = loads(out.stdout)
    assert doc["self"] == "n3" and doc["leader"] == "n1"
    keys = {
        "name",
        "address",
        "status",
        "reachable",
        "up_number",
        "age_rank",
        "generation",
        "heartbeat",
        "phi",
        "metadata",
    }
    assert all(set(m) == keys for m in doc["members"])
    ranks = {m["name"]: m["age_rank"] for m in doc["members"]}
    assert ranks["n1"] == 1, ranks

    # SIGKILL the leader: every survivor agrees on the next oldest (age rank 2).
    old_gen = {m["name"]: m["generation"] for m in doc["members"]}["n1"]
    (second,) = [name for name, rank in ranks.items() if rank == 2]
    peers.signal("n1", signal.SIGKILL)

    async def takeover() -> Any:
        docs = [await members(peers.addr[n]) for n in NAMES[1:]]
        return all(
            d is not None and d["leader"] == second and view(d)["n1"][0] == "down" for d in docs
        )

    await eventually(takeover, within=30, what=f"{second} leads after n1 is killed", peers=peers)

    # Restart n1 with its data dir: one entry, a new generation, the same member: its age is
    # kept, so it is the oldest again and leads (a restart moves no leadership and no table).
    peers.procs["n1"].wait(timeout=10)
    peers.start("n1", ports[0], seeds=[second], data_dir=str(tmp_path / "n1"))

    async def rejoined() -> Any:
        docs = [await members(peers.addr[n]) for n in NAMES]
        for d in docs:
            if d is None:
                return False
            entries = [m for m in d["members"] if m["name"] == "n1"]
            if (
                len(entries) != 1
                or entries[0]["status"] != "up"
                or entries[0]["generation"] <= old_gen
            ):
                return False
            if entries[0]["age_rank"] != 1 or d["leader"] != "n1":
                return False
        return True

    await eventually(rejoined, within=30, what="n1 back as the same member", peers=peers)

    # SIGTERM a peer: it leaves gracefully, the others show it left (not down), it exits 0.
    leaver = next(n for n in ("n5", "n4", "n3") if n != second)
    stayers = [n for n in NAMES if n != leaver]
    peers.signal(leaver, signal.SIGTERM)
    assert peers.procs[leaver].wait(timeout=20) == 0, peers.log(leaver)

    async def left() -> Any:
        docs = [await members(peers.addr[n]) for n in stayers]
        return all(d is not None and view(d)[leaver][0] == "left" for d in docs)

    await eventually(left, within=15, what=f"{leaver} shown as left", peers=peers)
    for name in stayers:
        assert f"event down {leaver} " not in peers.log(name), peers.log(name)


async def test_cluster_up_restarts_a_dead_peer_and_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    """``cluster up --restart``: a peer killed is reported and started again; Ctrl-C stops every
    peer and removes the temporary log folder (every peer stopped cleanly)."""
    port = consecutive_free_ports(3)
    temp = tmp_path / "tmp"
    temp.mkdir()
    log = tmp_path / "launcher.out"
    proc = _popen_logged(
        [
            sys.executable, "-m", "gossipkv_cli", "cluster", "up",
            "-n", "3", "--base-port", str(port), "--restart",
        ],
        log,
        {**ENV, "TMPDIR": str(temp)},
    )  # fmt: skip

    def output() -> str:
        return log.read_text(errors="replace")

    try:

        async def ready() -> Any:
            doc = await members(f"127.0.0.1:{port}")
            up = doc is not None and sum(m["status"] == "up" for m in doc["members"]) == 3
            return up or (proc.poll() is not None and output())

        assert await eventually(ready, within=60, what="3 peers up") is True, output()
        children = children_of(proc.pid)
        assert len(children) == 3, children
        n2 = next(c for c in children if "n2" in _cmdline(c))
        os.kill(n2, signal.SIGKILL)

        async def restarted() -> Any:
            now = children_of(proc.pid)
            return len(now) == 3 and n2 not in now and now

        children = await eventually(restarted, within=30, what="n2 started again")

        async def n2_back() -> Any:
            doc = await members(f"127.0.0.1:{port + 1}")
            return doc is not None and sum(m["status"] == "up" for m in doc["members"]) == 3

        await eventually(n2_back, within=30, what="the restarted n2 up again")
        proc.send_signal(signal.SIGINT)
        await trio.to_thread.run_sync(lambda: proc.wait(timeout=30))
        out = output()
        assert proc.returncode == 0, out
        assert "peer n2 was killed by signal 9" in out, out
        assert "peer n2 restarted (restart 1)" in out, out
        assert "all peers stopped" in out
        assert [pid for pid in children if is_running(pid)] == []
        assert list(temp.iterdir()) == []  # the temporary log folder is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _popen_logged(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def consecutive_free_ports(n: int) -> int:
    """A port P such that P..P+n-1 are free now (the launcher takes consecutive ports)."""
    for _ in range(100):
        base = free_ports(1)[0]
        if base + n > 65535:
            continue
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports")


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().decode(errors="replace")


def test_port_in_use_is_one_line_and_nonzero() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = cli("peer", "--listen", f"127.0.0.1:{port}", timeout=20)
    assert out.returncode != 0
    assert out.stderr.strip().splitlines()[-1].startswith("error: cannot listen on"), out.stderr
    assert "Traceback" not in out.stderr


def test_data_dir_that_is_a_file_is_one_line_and_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "file"
    bad.write_text("x")
    port = free_ports(1)[0]
    out = cli("peer", "--listen", f"127.0.0.1:{port}", "--data-dir", str(bad), timeout=20)
    assert out.returncode != 0
    assert "not a directory" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_unreachable_peer_is_one_line_and_nonzero() -> None:
    port = free_ports(1)[0]
    out = cli("members", "--peer", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error:"), out.stderr


async def test_wrong_cluster_is_refused_at_both_ends_and_garbage_is_survived(peers: Peers) -> None:
    port = free_ports(1)[0]
    peers.start("a", port, cluster="blue")
    await eventually(lambda: _members_in(peers.addr["a"], "blue"), within=20, what="peer a up")
    out = cli("members", "--peer", peers.addr["a"], "--cluster", "red")
    assert out.returncode == 1
    assert (
        "cluster name mismatch" in out.stderr and "'blue'" in out.stderr and "'red'" in out.stderr
    )

    # Garbage, an oversized length prefix and a truncated frame: each closes one connection.
    for junk in (
        b"\xff" * 64,
        (2**31).to_bytes(4, "big") + b"xx",
        (50).to_bytes(4, "big") + b"\x01",
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(junk)
        await stream.send_eof()
        with trio.fail_after(10):
            while await stream.receive_some(1024):
                pass
        await stream.aclose()
    out = cli("status", "--peer", peers.addr["a"], "--cluster", "blue", "--json")
    assert out.returncode == 0, out.stderr
    assert loads(out.stdout)["status"] == "up"
    assert "refused connection" in peers.log("a")


async def _members_in(addr: str, cluster: str) -> Any:
    import gossipkv

    try:
        async with gossipkv.open_client([addr], cluster=cluster, connect_timeout=0.5) as c:
            return members_doc(await c.members())
    except gossipkv.GossipKVError:
        return None


async def test_joiner_keeps_trying_its_seed_and_says_so(peers: Peers) -> None:
    port_a, port_b = free_ports(2)
    peers.start("b", port_b, seeds=[f"127.0.0.1:{port_a}"])

    async def says_so() -> Any:
        return "still trying to reach seeds" in peers.log("b")

    await eventually(says_so, within=20, what="b logs that it keeps trying", peers=peers)
    doc = await members(peers.addr["b"])
    assert doc is not None and view(doc) == {"b": ("joining", None)}, doc
    peers.start("a", port_a)

    async def joined() -> Any:
        d = await members(peers.addr["b"])
        return d is not None and d["leader"] == "a" and view(d)["b"][0] == "up"

    await eventually(joined, within=20, what="b joins once its seed is up", peers=peers)
