"""A Jepsen-style set test on a simulated cluster (datapath.md §d.6), plus its LWW control.

Five peers (N=3, R=W=2, sloppy quorums). Five clients add unique integers to ONE key: read, union
every sibling's set, add the next integer, write back with the read's context. Each add is recorded
as invoke, then ok / fail (certainly not written) / info (outcome unknown). A seeded nemesis cuts the
cluster into majority/minority halves, crashes and restarts a peer, pauses one, and drops 10-20% of
the frames. At the end everything heals, the test waits for quiescence (R=3 reads stable, replicas
equal, no hints pending) and the lost-writes checker compares: lost = acked - final must be empty,
unexpected = final - attempted must be empty.

The control run uses ``KVConfig(last_write_wins=True)``: the checker must see it lose writes.
All durations are simulated seconds (autojump MockClock); every failure names its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from gossipkv import GossipKVError, KVConfig
from gossipkv._errors import ClusterNotReady
from gossipkv.testing import SimCluster

from ._checks import describe, settle
from ._kvsim import kv_cluster, names, owners, replicas_equal, service

JEPSEN_SEEDS = [7, 17, 27, 37, 47]
KEY = "the-set"
CLIENTS = 5


@pytest.fixture(params=JEPSEN_SEEDS, ids=[f"seed{s}" for s in JEPSEN_SEEDS])
def jseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@dataclass
class History:
    ops: list[tuple[float, int, str, int, str]] = field(default_factory=list)

    def record(self, client: int, kind: str, x: int, note: str = "") -> None:
        self.ops.append((trio.current_time(), client, kind, x, note))

    def of(self, kind: str) -> set[int]:
        return {x for _, _, k, x, _ in self.ops if k == kind}


@dataclass(frozen=True)
class Verdict:
    attempts: set[int]
    acked: set[int]
    final: set[int]

    @property
    def lost(self) -> set[int]:
        return self.acked - self.final

    @property
    def unexpected(self) -> set[int]:
        return self.final - self.attempts

    @property
    def recovered(self) -> set[int]:
        return self.final & (self.attempts - self.acked)

    @property
    def valid(self) -> bool:
        return not self.lost and not self.unexpected

    def summary(self) -> str:
        return (
            f"attempted={len(self.attempts)} acked={len(self.acked)} final={len(self.final)} "
            f"lost={sorted(self.lost)[:20]}{'...' if len(self.lost) > 20 else ''} "
            f"({len(self.lost)}) unexpected={sorted(self.unexpected)[:20]} "
            f"recovered={len(self.recovered)}"
        )


def check_set(history: History, final: set[int]) -> Verdict:
    """Jepsen's ``set`` checker."""
    return Verdict(history.of("invoke"), history.of("ok"), final)


def union(values: list[object]) -> set[int]:
    out: set[int] = set()
    for v in values:
        assert isinstance(v, list), f"unexpected sibling {v!r}"
        out.update(int(x) for x in v)
    return out


async def client(
    c: SimCluster, i: int, history: History, rng: random.Random, stop: trio.Event
) -> None:
    """Client ``i`` adds i, i+5, i+10, ... through peer n{i+1}."""
    peer = f"n{i + 1}"
    x = i
    while not stop.is_set():
        history.record(i, "invoke", x)
        node = c.nodes.get(peer)
        outcome, note = "fail", "peer down"
        if node is not None:
            outcome, note = "info", "timeout"
            with trio.move_on_after(3.0):
                try:
                    got = await node.get(KEY)
                except GossipKVError as exc:
                    outcome, note = "fail", f"get: {type(exc).__name__}"
                else:
                    try:
                        await node.put(KEY, sorted(union(got.values) | {x}), context=got.context)
                    except ClusterNotReady as exc:
                        outcome, note = "fail", f"put: {type(exc).__name__}"
                    except GossipKVError as exc:  # may have been stored: unknown
                        outcome, note = "info", f"put: {type(exc).__name__}"
                    else:
                        outcome, note = "ok", ""
        history.record(i, outcome, x, note)
        x += CLIENTS
        await trio.sleep(rng.uniform(0.05, 0.3))


async def nemesis(c: SimCluster, rng: random.Random, faults: list[str], log: list[str]) -> None:
    """Apply each fault for a few seconds, then undo it and let the cluster breathe."""
    everyone = names(5)
    for fault in faults:
        await trio.sleep(rng.uniform(1.0, 3.0))
        hold = rng.uniform(3.0, 6.0)
        if fault == "partition":
            shuffled = rng.sample(everyone, len(everyone))
            c.partition(shuffled[:3], shuffled[3:])
            log.append(f"{trio.current_time():.1f} partition {shuffled[:3]} | {shuffled[3:]}")
            await trio.sleep(hold)
            c.heal()
        elif fault == "crash":
            victim = rng.choice(everyone)
            c.kill(victim)
            log.append(f"{trio.current_time():.1f} crash {victim}")
            await trio.sleep(hold)
            await c.restart(victim, seeds=[n for n in everyone if n != victim][:2])
        elif fault == "pause":
            victim = rng.choice(everyone)
            c.pause(victim)
            log.append(f"{trio.current_time():.1f} pause {victim}")
            await trio.sleep(hold)
            c.resume(victim)
        elif fault == "loss":
            loss = rng.uniform(0.1, 0.2)
            c.net.set_link(loss=loss)
            log.append(f"{trio.current_time():.1f} loss {loss:.2f}")
            await trio.sleep(hold)
            c.net.set_link(loss=0.0)
        log.append(f"{trio.current_time():.1f} healed")


async def quiescent_final(c: SimCluster, seed: int) -> set[int]:
    """Heal is done: read with R=3 until two reads agree, replicas are equal, no hint pends."""
    await settle(c, names(5), within=60)
    own = owners(c, KEY)
    previous: tuple[list[object], bytes] | None = None
    with trio.fail_after(60):
        while True:
            got = await c.nodes["n1"].get(KEY, r=3)
            current = (sorted(map(str, got.values)), got.context)
            if (
                current == previous
                and await replicas_equal(c, KEY, own)
                and all(service(n).hints_pending == 0 for n in c.nodes.values())
            ):
                return union(got.values)
            previous = current
            await trio.sleep(1.0)


async def run_set_test(seed: int, kv: KVConfig, *, nemesis_on: bool) -> tuple[Verdict, str]:
    rng = random.Random(f"jepsen/{seed}")
    history = History()
    log: list[str] = []
    async with kv_cluster(seed, kv=kv) as c:
        stop = trio.Event()
        faults = ["partition", "crash", "pause", "loss"] * 2
        rng.shuffle(faults)
        async with trio.open_nursery() as nursery:
            for i in range(CLIENTS):
                nursery.start_soon(client, c, i, history, random.Random(f"{seed}/c{i}"), stop)
            if nemesis_on:
                await nemesis(c, rng, faults, log)
            else:
                await trio.sleep(10)
            await trio.sleep(2)
            stop.set()
        final = await quiescent_final(c, seed)
        info = f"seed={seed}\nnemesis: {log}\n{describe(c)}"
    return check_set(history, final), info


async def test_set_with_dvv_loses_no_acknowledged_write(
    jseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    verdict, info = await run_set_test(jseed, KVConfig(r=2, w=2), nemesis_on=True)
    assert len(verdict.acked) >= 20, f"too few writes acknowledged: {verdict.summary()}\n{info}"
    assert verdict.valid, f"{verdict.summary()}\n{info}"


async def test_lww_control_run_loses_writes_and_the_checker_sees_it(
    jseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    verdict, info = await run_set_test(
        jseed, KVConfig(r=2, w=2, last_write_wins=True), nemesis_on=False
    )
    assert not verdict.unexpected, f"{verdict.summary()}\n{info}"
    assert verdict.lost, f"LWW lost nothing, so the checker proves nothing: {verdict.summary()}"
