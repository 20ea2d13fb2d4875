"""A join storm with real processes: many peers started at the same moment, before their seeds
listen, all end up listed and up at every peer (issue 15: 46 of 100 peers once never joined)."""

from __future__ import annotations

from pathlib import Path

from ._peers import Peers, eventually, free_ports, members

COUNT = 24


async def test_peers_started_at_once_are_all_listed_up_everywhere(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    ports = free_ports(COUNT)
    names = [f"s{i:02d}" for i in range(COUNT)]
    seed_a, seed_b = f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"
    try:
        # Every process starts at once, the seeds with them: the others retry until a seed
        # listens. Half know one seed, half know two (the first one is listed second).
        for i, (name, port) in enumerate(zip(names, ports, strict=True)):
            if i == 0:
                seeds: list[str] = []
            elif i == 1 or i % 2:
                seeds = [seed_a]
            else:
                seeds = [seed_b, seed_a]
            peers.start(name, port, seeds)

        async def everyone_sees_everyone() -> bool | str:
            lagging = []
            for name in names:
                doc = await members(peers.addr[name])
                up = (
                    set()
                    if doc is None
                    else {m["name"] for m in doc["members"] if m["status"] == "up"}
                )
                if up != set(names):
                    lagging.append(f"{name}: {len(up)} up")
            return not lagging or "; ".join(lagging)

        async def converged() -> bool:
            return (await everyone_sees_everyone()) is True

        await eventually(converged, within=180, what=f"{COUNT} peers up at every peer", peers=peers)
        # And once more: no peer marked any other down meanwhile.
        for name in names:
            doc = await members(peers.addr[name])
            assert doc is not None, f"{name} stopped answering"
            statuses = {m["name"]: m["status"] for m in doc["members"]}
            assert set(statuses.values()) == {"up"}, f"{name} sees {statuses}"
        assert peers.alive() == names, f"exited: {set(names) - set(peers.alive())}"
    finally:
        peers.kill_all()
