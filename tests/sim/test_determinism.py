"""The same seed gives the same run: what a failing seed in a message is worth.

Each scenario runs twice, each run in a process of its own with its own string hashes, and every number that depends on
the order things happened in (bytes and frames each peer sent, the time the cluster took to
settle, each peer's view) must come out the same. Trio runs the tasks ready at one moment in a
random order of its own; the simulator seeds that order from its seed
(:func:`gossipkv.testing._sim.seed_trio_scheduler`). Without it, five runs of one seed at 30
peers healed a partition in five different times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio.testing

from gossipkv.testing import open_sim_cluster

from ._checks import settle

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f"n{i}" for i in range(1, 31)]


async def _run(seed: int) -> dict[str, object]:
    async with open_sim_cluster(len(NAMES), seed=seed) as c:
        start = trio.current_time()
        await settle(c, NAMES)
        settled = trio.current_time() - start
        c.partition(NAMES[:15], NAMES[15:])
        await trio.sleep(20.0)
        c.heal()
        await trio.sleep(4.0)
        c.kill("n7")
        await trio.sleep(4.0)
        survivors = [n for n in NAMES if n != "n7"]
        sent = {}
        for name in survivors:
            stats = c.nodes[name].statistics()
            sent[name] = (stats.bytes_out, stats.frames_out)
        views = {
            name: sorted((m.name, m.status, m.reachable) for m in c.nodes[name].members())
            for name in survivors
        }
        return {"settled": round(settled, 6), "sent": sent, "views": views}


def _simulate(seed: int) -> dict[str, object]:
    clock = trio.testing.MockClock(autojump_threshold=0)
    result: dict[str, object] = trio.run(_run, seed, clock=clock)
    return result


def _simulate_elsewhere(seed: int, hash_seed: int) -> object:
    """The run in a process of its own (its own string hashes, its own Trio module state)."""
    code = (
        "import json, sys; from tests.sim.test_determinism import _simulate; "
        "print(json.dumps(_simulate(int(sys.argv[1]))))"
    )
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(seed)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_one_seed_gives_one_run(seed: int) -> None:
    first = _simulate_elsewhere(seed, hash_seed=1)
    second = _simulate_elsewhere(seed, hash_seed=2)
    assert first == second, f"seed={seed}: two runs of the same seed differ"


async def test_simulated_time_stands_still_while_a_worker_thread_runs(
    autojump_clock: trio.testing.MockClock, clock_waits_for_threads: None
) -> None:
    """Tests that run a real log engine in the simulated cluster rely on this: without it, a slow
    fsync lets the clock jump past whole replica timeouts (a CI failure of test_disk_reads)."""
    ticks = 0

    async def timers() -> None:
        nonlocal ticks
        while True:
            await trio.sleep(0.5)
            ticks += 1

    def slow_fsync() -> str:
        time.sleep(0.05)  # real time: without the fixture, over 1,000 simulated seconds pass
        return "done"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(timers)
        await trio.sleep(1.25)
        start, start_ticks = trio.current_time(), ticks
        assert await trio.to_thread.run_sync(slow_fsync) == "done"
        assert trio.current_time() == start, "the clock jumped while the thread ran"
        assert ticks == start_ticks
        nursery.cancel_scope.cancel()
