"""Checkers for simulated clusters: agreement on members and leader, event scans."""

from __future__ import annotations

from gossipkv.testing import SimCluster


def statuses(cluster: SimCluster, at: str) -> dict[str, str]:
    return {m.name: m.status for m in cluster.nodes[at].members()}


def all_see(cluster: SimCluster, name: str, status: str, *, among: list[str] | None = None) -> bool:
    viewers = among if among is not None else [n for n in cluster.nodes if n != name]
    return all(statuses(cluster, v).get(name) == status for v in viewers)


def all_up(cluster: SimCluster, names: list[str]) -> bool:
    """Every running node lists exactly ``names`` as up (and no other member as up)."""
    want = set(names)
    for node in cluster.nodes.values():
        ups = {m.name for m in node.members() if m.status == "up"}
        if ups != want:
            return False
    return True


def leaders(cluster: SimCluster, among: list[str] | None = None) -> set[str | None]:
    names = among if among is not None else list(cluster.nodes)
    return {cluster.nodes[n].leader() for n in names}


def describe(cluster: SimCluster) -> str:
    """A compact dump of every node's view, for assertion messages."""
    lines = []
    for name, node in sorted(cluster.nodes.items()):
        view = " ".join(
            f"{m.name}:{m.status}{'' if m.reachable else '!'}{m.up_number or ''}"
            for m in node.members()
        )
        lines.append(f"  {name} leader={node.leader()} [{view}]")
    return "\n".join(lines)


async def settle(cluster: SimCluster, names: list[str], *, within: float = 10.0) -> None:
    """Wait (simulated time) until every running node lists exactly ``names`` as up."""
    import trio

    with trio.fail_after(within):
        await cluster.wait_until(lambda: all_up(cluster, names))


def by_age(cluster: SimCluster, at: str, among: list[str] | None = None) -> list[str]:
    """Names ordered oldest first (by up_number) as peer ``at`` sees them."""
    rows = [m for m in cluster.nodes[at].members() if m.up_number is not None]
    if among is not None:
        rows = [m for m in rows if m.name in among]
    return [m.name for m in sorted(rows, key=lambda m: (m.up_number, m.generation, m.name))]
