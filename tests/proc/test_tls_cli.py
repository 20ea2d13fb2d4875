"""Mutual TLS through real peer processes and the CLI (issue 13): ``gossipkv certs``, a TLS
cluster, plaintext and TLS refusing each other, roles, and a CA rotated under ``bench kv`` load.

Kept lean (two clusters of two peers): the rest is covered in process by tests/unit/test_tls.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

import gossipkv
from gossipkv._messages import (
    Ack,
    DigestEntry,
    NodeDelta,
    PartitionFetch,
    ReplicaPut,
    Shutdown,
    Syn,
    SynAck,
    VersionedEntry,
)

from .._wire import raw_channel
from ._peers import ENV, Peers, cli, eventually, free_ports

pytestmark = pytest.mark.proc


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"rc={out.returncode}\nstdout={out.stdout}\nstderr={out.stderr}"
    return out.stdout


def refused(out: subprocess.CompletedProcess[str], text: str) -> None:
    """A non-zero exit with exactly one error line, containing ``text``."""
    assert out.returncode != 0, out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], out.stderr


def make_pki(directory: Path, peers: list[str], *, by_cli: bool = False) -> None:
    """A CA with peer certificates, ``app`` (client) and ``ops`` (operator)."""
    roles = [*((n, "peer") for n in peers), ("app", "client"), ("ops", "operator")]
    if not by_cli:  # the library: a process start less per certificate
        gossipkv.create_ca(directory)
        for name, role in roles:
            gossipkv.issue_certificate(directory, name, role)
        return
    ok(cli("certs", "init", "--dir", str(directory)))
    for name, role in roles:
        ok(cli("certs", "issue", "--dir", str(directory), f"--{role}", name))


async def wait_up(peers: Peers, names: list[str], tls: Path | None) -> None:
    config = None if tls is None else gossipkv.TLSConfig.from_dir(tls, "ops")

    async def all_up() -> Any:
        try:
            async with gossipkv.open_client(
                [peers.addr[names[0]]], connect_timeout=0.5, request_timeout=2.0, tls=config
            ) as client:
                doc = await client.members()
                await client.put("ready", "yes")  # a partition table exists
        except gossipkv.GossipKVError:
            return False
        return sorted(m.name for m in doc if m.status == "up") == names

    await eventually(all_up, within=30, what=f"{names} up and writable", peers=peers)


async def test_certs_tls_cluster_mismatch_and_roles(peers: Peers, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    make_pki(pki, ["a", "b"], by_cli=True)
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "a.key").stat().st_mode) == 0o600
    refused(cli("certs", "issue", "--dir", str(pki), "--peer", "bad/name"), "certificate name")
    refused(cli("certs", "issue", "--dir", str(pki), "--client", "app"), "already exists")
    refused(cli("certs", "issue", "--dir", str(pki)), "exactly one of")
    refused(cli("certs", "init", "--dir", str(pki)), "already exists")

    ports = free_ports(3)
    peers.start("a", ports[0], tls_dir=str(pki))
    peers.start("b", ports[1], seeds=["a"], tls_dir=str(pki))
    peers.start("plain", ports[2])
    await wait_up(peers, ["a", "b"], pki)
    a, b, plain = peers.addr["a"], peers.addr["b"], peers.addr["plain"]
    app = ["--tls-dir", str(pki), "--tls-name", "app"]
    ops = ["--tls-dir", str(pki), "--tls-name", "ops"]

    ok(cli("put", "k", "v", "--peer", b, *app))
    assert json.loads(ok(cli("get", "k", "--peer", a, "--json", *app)))["values"] == ["v"]
    # Plaintext against TLS, and TLS against plaintext: one line on each side.
    refused(cli("get", "k", "--peer", a), "requires TLS")
    refused(cli("members", "--peer", plain, *app), "runs without TLS")
    # The peer certificate of b cannot pass for a member called x (here: a third peer).
    peers.start("x", free_ports(1)[0], seeds=["a"], tls_dir=str(pki), tls_name="b")
    # A client certificate may not make operator calls; an operator one may.
    refused(cli("leave", "--peer", b, *app), "only operators may send leave")
    ok(cli("certs", "reload", "--peer", b, *ops))
    refused(cli("certs", "reload", "--peer", b, *app), "only operators")
    env_ops = {**ENV, "GOSSIPKV_TLS_DIR": str(pki), "GOSSIPKV_TLS_NAME": "ops"}
    stats = subprocess.run(
        [sys.executable, "-m", "gossipkv_cli", "stats", "--peer", a, "--json"],
        capture_output=True, text=True, timeout=30, env=env_ops, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    doc = json.loads(ok(stats))
    assert doc["refused_handshakes"]["tls_required"] >= 1, doc["refused_handshakes"]

    async def identity_refused() -> Any:
        out = cli("stats", "--peer", a, "--json", *ops)
        return out.returncode == 0 and json.loads(out.stdout)["refused_handshakes"].get(
            "tls_identity", 0
        )

    await eventually(identity_refused, within=15, what="x refused for b's certificate", peers=peers)
    b_stats = json.loads(ok(cli("stats", "--peer", b, "--json", *ops)))
    assert b_stats["refusals"]["operator_message_from_client"] >= 2
    # The peer logs say so in one line each.
    assert "sent plaintext, but this peer requires TLS" in peers.log("a")
    assert "started a TLS handshake, but this end runs without TLS" in peers.log("plain")
    assert "the certificate names 'b', but the hello claims 'x'" in peers.log("a")


def _bundle(pki: Path, new: Path, *, old_too: bool) -> None:
    data = ((pki / "ca.pem").read_bytes() if old_too else b"") + (new / "ca.pem").read_bytes()
    tmp = pki / "ca.pem.tmp"
    tmp.write_bytes(data)
    tmp.replace(pki / "ca.pem")


async def test_ca_rotation_under_bench_kv_load_has_no_errors(peers: Peers, tmp_path: Path) -> None:
    pki, new = tmp_path / "pki", tmp_path / "new"
    make_pki(pki, ["a", "b"])
    make_pki(new, ["a", "b"])
    old_ca = (pki / "ca.pem").read_bytes()
    ports = free_ports(2)
    peers.start("a", ports[0], tls_dir=str(pki))
    peers.start("b", ports[1], seeds=["a"], tls_dir=str(pki))
    await wait_up(peers, ["a", "b"], pki)
    a, b = peers.addr["a"], peers.addr["b"]
    app = ["--tls-dir", str(pki), "--tls-name", "app"]
    ops = ["--tls-dir", str(pki), "--tls-name", "ops"]
    bench = await trio.to_thread.run_sync(
        lambda: subprocess.Popen(
            [sys.executable, "-m", "gossipkv_cli", "bench", "kv", "--peer", a, "--peer", b,
             "--duration", "6", "--concurrency", "4", "--json", *app],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
            stdin=subprocess.DEVNULL,
        )
    )  # fmt: skip

    async def step() -> None:
        # Every step: new connections (a new TLS handshake each) still work on both peers.
        for addr in (a, b):
            async with gossipkv.open_client(
                [addr], tls=gossipkv.TLSConfig.from_dir(pki, "app")
            ) as client:
                assert "yes" in (await client.get("ready")).values

    async def reload(addr: str) -> None:
        async with gossipkv.open_client(
            [addr], tls=gossipkv.TLSConfig.from_dir(pki, "ops")
        ) as client:
            await client.reload_tls()

    # 1. Trust old and new CA; reload a by the admin call, b by SIGHUP.
    _bundle(pki, new, old_too=True)
    ok(cli("certs", "reload", "--peer", a, *ops))
    peers.signal("b", signal.SIGHUP)

    async def b_reloaded() -> bool:
        return "reloaded the TLS certificate" in peers.log("b")

    await eventually(b_reloaded, within=10, what="b reloads on SIGHUP", peers=peers)
    await step()
    # 2. New certificates for everyone (the clients' copies too), then reload.
    for name in ("a", "b", "app", "ops"):
        for ext in (".pem", ".key"):
            os.replace(new / f"{name}{ext}", pki / f"{name}{ext}")
    await reload(a)
    await reload(b)
    await step()
    # 3. Only the new CA.
    _bundle(pki, new, old_too=False)
    await reload(a)
    await reload(b)
    await step()
    assert bench.poll() is None, "the load must span the whole rotation"
    out, err = await trio.to_thread.run_sync(lambda: bench.communicate(timeout=60))
    assert bench.returncode == 0, err
    result = json.loads(out)
    assert result["errors"] == 0 and result["ops"] > 0, result
    # The old CA is no longer trusted.
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / "ca.pem").write_bytes(old_ca)
    for ext in (".pem", ".key"):
        (tmp_path / "stale" / f"app{ext}").write_bytes(
            (tmp_path / "pki" / f"app{ext}").read_bytes()
        )
    refused(cli("get", "ready", "--peer", a, "--tls-dir", str(tmp_path / "stale")), "refused")
    assert peers.log("b").count("reloaded the TLS certificate") >= 3


async def test_cluster_up_tls_makes_a_throwaway_ca(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    data = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossipkv_cli", "cluster", "up", "-n", "2", "--tls",
         "--base-port", str(port), "--data-root", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=ENV,
    )  # fmt: skip
    try:
        addr = f"127.0.0.1:{port}"

        async def ready() -> Any:
            if not (data / "tls" / "operator.pem").exists():
                return False
            config = gossipkv.TLSConfig.from_dir(data / "tls", "operator")
            try:
                async with gossipkv.open_client([addr], tls=config, request_timeout=2.0) as c:
                    doc = await c.members()
            except gossipkv.GossipKVError:
                return False
            return sum(m.status == "up" for m in doc) == 2

        await eventually(ready, within=30, what="2 TLS peers up")
        refused(cli("members", "--peer", addr), "requires TLS")
        proc.send_signal(signal.SIGINT)
        out, _ = await trio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
        assert proc.returncode == 0, out
        assert b"--tls-dir" in out  # where the throwaway CA is (rich may wrap the path)
    finally:
        if proc.poll() is None:
            proc.kill()


NEAR_LIMIT = 2**62 - 1


async def test_forgeries_against_a_tls_cluster_are_refused_and_change_nothing(
    peers: Peers, tmp_path: Path
) -> None:
    # The red team's attacks, now with TLS on: a client certificate speaking for members, a peer
    # certificate claiming another name, and a member's certificate (mallory, never started)
    # gossiping forged decisions, generations and a shutdown notice for b.
    pki = tmp_path / "pki"
    make_pki(pki, ["a", "b", "c", "mallory"])
    ports = free_ports(3)
    for name, port in zip("abc", ports, strict=True):
        peers.start(name, port, seeds=[] if name == "a" else ["a"], tls_dir=str(pki))
    await wait_up(peers, ["a", "b", "c"], pki)
    ops = gossipkv.TLSConfig.from_dir(pki, "ops")
    app = gossipkv.TLSConfig.from_dir(pki, "app")
    mallory = gossipkv.TLSConfig.from_dir(pki, "mallory")
    keys = [f"k{i}" for i in range(20)]
    async with gossipkv.open_client([peers.addr["a"]], tls=app) as client:
        for key in keys:
            await client.put(key, "v")

    async def snapshot() -> dict[str, Any]:
        out = {}
        for name in "abc":
            async with gossipkv.open_client([peers.addr[name]], tls=ops) as client:
                doc = await client.members()
                stats = await client.statistics()
            # Mallory itself may appear as joining: a peer certificate may join.
            members = sorted((m.name, m.status, m.generation) for m in doc if m.name != "mallory")
            owners = sorted(n for n, count in stats.partitions_owned.items() if count)
            out[name] = {"members": members, "epoch": stats.table_epoch, "owners": owners}
        return out

    async def settled() -> Any:
        # Every peer holds the same table and it spans a, b and c: the leader planned the last
        # table this cluster needs, so what is compared afterwards is the forgeries' doing. (A
        # check for agreement alone once caught the cluster between two tables, in CI.)
        snap = await snapshot()
        agreed = len({str(v) for v in snap.values()}) == 1
        return agreed and snap["a"]["owners"] == ["a", "b", "c"] and snap

    before = await eventually(settled, within=30, what="a, b and c agree", peers=peers)
    a = peers.addr["a"]
    async with trio.open_nursery() as nursery:
        # A client certificate: no replica write (the erase), no key listing, no gossip.
        for message in (
            ReplicaPut("k0", b"\x80"),
            PartitionFetch(0, 64),
            Syn("client", 1, ()),
        ):
            channel = await raw_channel(a, app, "client", nursery)
            with trio.fail_after(10), pytest.raises(gossipkv.RemoteError, match="only members"):
                await channel.request(message)
        # A peer certificate under another member's name: refused at the hello.
        with trio.fail_after(10), pytest.raises(gossipkv.HandshakeError, match="hello claims"):
            await raw_channel(a, mallory, "b", nursery)
        # Mallory's own name: what it gossips is vetted.
        channel = await raw_channel(a, mallory, "mallory", nursery, generation=1)
        # A sample saying it knows nothing of the members gets their whole namespaces back.
        nothing = tuple(DigestEntry(name, 0, 0, 0) for name in "abc")
        with trio.fail_after(10):
            reply = await channel.request(Syn("mallory", 1, nothing))
        assert isinstance(reply, SynAck)
        spaces = {nd.node_id: nd for nd in reply.delta}
        real = next(e.value for e in spaces["a"].entries if e.key == "decisions")
        assert isinstance(real, dict)
        gen_b = spaces["b"].generation
        table = real["table"]
        forged = [
            {**real, "removed": {**real["removed"], "b": [NEAR_LIMIT, 0]}},
            {**real, "term": NEAR_LIMIT, "seq": NEAR_LIMIT, "table": [*table[:3], [["a"]]]},
            {**real, "seq": real["seq"] + 1, "table": [table[0], table[1] + 1, table[2],
                                                       [["x1", "y1", "z1"]] * len(table[3])]},
        ]  # fmt: skip
        for version, record in enumerate(forged, start=1):
            entry = VersionedEntry("decisions", record, version)
            await channel.notify(Ack((NodeDelta("mallory", 1, version, 0, version, (entry,)),)))
        hijack = NodeDelta("b", NEAR_LIMIT, 1, 0, 1, (VersionedEntry("addr", "127.0.0.1:1", 1),))
        await channel.notify(Ack((hijack,)))
        await channel.notify(Shutdown("b", gen_b))
        with trio.fail_after(10):  # a round trip: the notices above were written
            await channel.request(Syn("mallory", 1, ()))
        nursery.cancel_scope.cancel()

    want = ["epoch_limit", "table_invalid", "generation_ahead", "shutdown_not_own"]

    async def all_refused() -> Any:
        async with gossipkv.open_client([a], tls=ops) as client:
            refusals = (await client.statistics()).refusals
        assert isinstance(refusals, dict)
        seen = {r: refusals.get(f"gossip_{r}", 0) for r in want}
        return all(seen.values()) and refusals.get("member_message_from_client", 0) >= 3 and seen

    await eventually(all_refused, within=15, what="every forgery refused at a", peers=peers)
    await trio.sleep(3)  # a few gossip rounds for anything that got through to spread
    after = await snapshot()
    assert after == before, f"the forgeries changed the cluster:\n{before}\n{after}"
    async with gossipkv.open_client([peers.addr["c"]], tls=app) as client:
        for key in keys:
            assert (await client.get(key, r=3)).values == ["v"], key
    assert "refused gossip (epoch_limit)" in peers.log("a")
    # Certificates of another CA: the client refuses the peer's certificate, in one line.
    other = tmp_path / "other"
    make_pki(other, [])
    refused(cli("get", "k0", "--peer", a, "--tls-dir", str(other), "--tls-name", "app"), "refused")
