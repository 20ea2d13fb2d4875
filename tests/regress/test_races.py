"""Review regressions (task-less data path): lock-free puts and in-reader replica writes racing locked, hinted writes."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ..sim._kvsim import (
    find_key,
    kv_cluster,
    live,
    names,
    owners,
    service,
    wait_replicas_equal,
    wait_unreachable,
)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
async def test_concurrent_blind_puts_mixing_nowait_and_hinted_paths_lose_nothing(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with kv_cluster(seed) as c:
        key = find_key(c, lambda o: "n1" not in o[1:], prefix="race")
        o1, o2, o3 = owners(c, key)
        with trio.fail_after(120):
            c.kill(o3)
            up = [n for n in names(5) if n != o3]
            await wait_unreachable(c, up, [o3])
            targets, _ = service(c.nodes[o1]).targets(key)
            stand_in = next(m for m, hint in targets if hint == o3)
            acked: list[str] = []

            async def writer(who: str, i: int) -> None:
                value = f"{who}-{i}"
                await trio.sleep((i % 7) * 0.0005)
                await c.nodes[who].put(key, value, w=2)
                acked.append(value)

            async with trio.open_nursery() as nursery:
                for who in (o1, o2, stand_in):
                    for i in range(25):
                        nursery.start_soon(writer, who, i)
            await c.restart(o3, seeds=["n1"])
            clock = await wait_replicas_equal(c, key, [o1, o2, o3], within=60, seed=seed)
        missing = sorted(set(acked) - set(map(str, live(clock))))
        assert not missing, f"seed={seed}: acknowledged writes lost: {missing}"
