"""A service registry on gossipkv membership metadata, on a simulated cluster.

Each peer that hosts a service announces it with ``node.set_metadata("service", ...)``; gossip
carries the metadata to every peer. A watcher on peer n1 polls ``node.members()`` and keeps the
set of live, reachable services, printing when one appears (a peer joined and announced) or
disappears (its peer crashed and was detected as down).

It runs on ``gossipkv.testing.open_sim_cluster`` under ``trio.testing.MockClock``: deterministic and
fast. Run it::

    python examples/service_registry.py
"""

from __future__ import annotations

import trio
import trio.testing

from gossipkv import Node
from gossipkv.testing import open_sim_cluster


def services(node: Node) -> dict[str, str]:
    """Peer name -> announced service, for the members this node sees up and reachable."""
    return {
        m.name: m.metadata["service"]
        for m in node.members()
        if m.status == "up" and m.reachable and "service" in m.metadata
    }


async def watch_registry(
    node: Node, history: list[str], *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    known: dict[str, str] = {}
    task_status.started()
    while True:
        current = services(node)
        for name in sorted(current.keys() - known.keys()):
            history.append(f"+{name}")
            print(f"  [registry@n1] + {current[name]} (on {name})")
        for name in sorted(known.keys() - current.keys()):
            history.append(f"-{name}")
            print(f"  [registry@n1] - {known[name]} (on {name})")
        known = current
        await trio.sleep(0.5)


async def settle() -> None:
    """Give the watcher (polling every 0.5 s) time to report the change just made."""
    await trio.sleep(1)


async def main() -> None:
    history: list[str] = []
    async with open_sim_cluster(1, seed=11) as cluster, trio.open_nursery() as nursery:
        registry = cluster.nodes["n1"]
        await nursery.start(watch_registry, registry, history)

        for name, service in [("web1", "web@web1:8080"), ("db1", "postgres@db1:5432")]:
            node = await cluster.start(name, seeds=["n1"])
            node.set_metadata("service", service)
            print(f"{name} started, announcing {service}")
        with trio.fail_after(60):
            await registry.wait_until(lambda n: set(services(n)) == {"web1", "db1"})
        await settle()

        node = await cluster.start("web2", seeds=["n1"])
        node.set_metadata("service", "web@web2:8080")
        print("web2 started, announcing web@web2:8080")
        with trio.fail_after(60):
            await registry.wait_until(lambda n: "web2" in services(n))
        await settle()

        cluster.kill("web1")
        print("web1 crashed")
        with trio.fail_after(60):
            await registry.wait_until(lambda n: "web1" not in services(n))
        await settle()

        cluster.nodes["db1"].set_metadata("service", None)
        print("db1 withdrew its service")
        with trio.fail_after(60):
            await registry.wait_until(lambda n: "db1" not in services(n))
        await settle()

        nursery.cancel_scope.cancel()

    assert sorted(history[:2]) == ["+db1", "+web1"], history
    assert history[2:] == ["+web2", "-web1", "-db1"], history
    print("REGISTRY SAW:", " ".join(history))


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
