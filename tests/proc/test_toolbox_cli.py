"""The operator's toolbox (issue 16) through real processes: one 1-peer cluster serves every
check, so the tier pays for one start."""

from __future__ import annotations

from typing import Any

import pytest

from ._peers import Peers, cli, eventually, free_ports, loads, members

pytestmark = pytest.mark.proc


async def solo(peers: Peers) -> str:
    [port] = free_ports(1)
    peers.start("solo", port)
    addr = peers.addr["solo"]

    async def writable() -> Any:
        doc = await members(addr)
        return doc is not None and cli("put", "probe", "x", "--peer", addr).returncode == 0

    await eventually(writable, within=30, what="a writable 1-peer cluster", peers=peers)
    return addr


async def test_one_peer_cluster_through_the_cli(peers: Peers) -> None:
    addr = solo_addr = await solo(peers)

    # put twice: two siblings, and a hint; put --replace: one value.
    assert cli("put", "k", "a", "--peer", addr).returncode == 0
    twice = cli("put", "k", "b", "--peer", addr)
    assert "k: 2 siblings" in twice.stdout, twice.stdout
    assert "put --replace k VALUE" in twice.stderr
    replaced = cli("put", "k", "c", "--replace", "--peer", addr, "--json")
    assert replaced.returncode == 0, replaced.stderr
    assert loads(replaced.stdout)["values"] == ["c"]
    got = loads(cli("get", "k", "--peer", addr, "--json").stdout)
    assert got["values"] == ["c"]

    # status says what a 1-peer cluster really runs at.
    status = cli("status", "--peer", addr)
    assert status.returncode == 0, status.stderr
    assert "quorum: N=3 R=2 W=2   effective N=1 R=1 W=1" in status.stdout, status.stdout
    sdoc = loads(cli("status", "--peer", addr, "--json").stdout)
    assert (sdoc["n"], sdoc["w"], sdoc["n_effective"], sdoc["w_effective"]) == (3, 2, 1, 1)

    # Piped, nothing is cut: the whole address and generation, no ellipsis.
    doc = loads(cli("members", "--peer", addr, "--json").stdout)
    [me] = doc["members"]
    for command in ("members", "status"):
        out = cli(command, "--peer", solo_addr).stdout
        assert me["address"] in out and str(me["generation"]) in out, out
        assert "…" not in out
