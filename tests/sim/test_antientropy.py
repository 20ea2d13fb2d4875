"""Anti-entropy on simulated clusters (datapath.md §d.5, riak_test verify_aae): with no reads and
no hinted handoff, replicas that missed writes or lost everything converge by anti-entropy alone.

Every duration is simulated seconds (autojump MockClock); every assertion names its seed.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import KVConfig, _dvv
from gossipkv import _antientropy as ae
from gossipkv import _merkle as mk
from gossipkv._dvv import DVVSet, Sibling, partition_of
from gossipkv._errors import RemoteError
from gossipkv._messages import (
    Message,
    TreeBranches,
    TreeHashes,
    TreeItems,
    TreeKeys,
    TreeRoot,
    TreeSegments,
)
from gossipkv.storage import MemoryEngine
from gossipkv.testing import SimCluster

from ._kvsim import (
    kv_cluster,
    names,
    owners,
    reachable,
    replicas_equal,
    service,
    stored,
    table,
    tables_agree,
    wait_unreachable,
)

Clock = DVVSet[Sibling]
AE_SEEDS = [11, 22, 33]
#: Anti-entropy interval in these scenarios, and how long convergence may take: each owner of a
#: partition visits it once per sweep of its ~38 partitions (64 partitions, N=3, 5 peers).
INTERVAL = 0.5
WITHIN = 60.0
KEYS = 12


@pytest.fixture(params=AE_SEEDS, ids=[f"seed{s}" for s in AE_SEEDS])
def aeseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def victim_keys(c: SimCluster, victim: str, count: int) -> list[str]:
    """``count`` keys ``ae0, ae1, ...`` that ``victim`` holds a replica of."""
    out: list[str] = []
    i = 0
    while len(out) < count:
        key = f"ae{i}"
        if victim in owners(c, key):
            out.append(key)
        i += 1
    return out


async def all_equal(c: SimCluster, keys: list[str]) -> bool:
    for key in keys:
        if not await replicas_equal(c, key, owners(c, key)):
            return False
    return True


async def time_to_converge(c: SimCluster, keys: list[str], within: float) -> float | None:
    """Simulated seconds until every replica of every key holds the same clock (or ``None``)."""
    start = trio.current_time()
    with trio.move_on_after(within):
        while not await all_equal(c, keys):  # noqa: ASYNC110 - simulated time
            await trio.sleep(0.1)
        return trio.current_time() - start
    return None


def activity(c: SimCluster) -> tuple[int, int, int, int, int]:
    """Summed anti-entropy (rounds, partitions differing, keys repaired, branches and segments
    exchanged) of the running peers."""
    counters = [service(n).anti_entropy.counters for n in c.nodes.values()]
    return (
        sum(x.rounds for x in counters),
        sum(x.partitions_differing for x in counters),
        sum(x.keys_repaired for x in counters),
        sum(x.branches_exchanged for x in counters),
        sum(x.segments_exchanged for x in counters),
    )


async def write_while_cut_off(c: SimCluster, victim: str, keys: list[str], seed: int) -> None:
    """Cut ``victim`` off, write every key with W=2 through another owner, heal."""
    rest = [n for n in names(5) if n != victim]
    c.partition([victim], rest)
    await wait_unreachable(c, rest, [victim])
    for key in keys:
        coordinator = next(o for o in owners(c, key) if o != victim)
        put = await c.nodes[coordinator].put(key, {"k": key}, w=2)
        assert put.values == [{"k": key}], f"seed={seed}: {put}"
    for key in keys:
        assert await stored(c, victim, key) is None, (
            f"seed={seed}: {victim} got {key} across the cut"
        )
    c.heal()


async def test_a_replica_that_missed_writes_converges_by_anti_entropy_alone(
    aeseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = aeseed
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=INTERVAL)
    async with kv_cluster(seed, kv=kv) as c:
        victim = "n3"
        keys = victim_keys(c, victim, KEYS)
        with trio.fail_after(WITHIN + 60):
            await write_while_cut_off(c, victim, keys, seed)
            # No reads from here on, no hints: only anti-entropy can repair the victim.
            took = await time_to_converge(c, keys, WITHIN)
            assert took is not None, f"seed={seed}: not converged within {WITHIN}s"
            # Once equal, anti-entropy goes quiet: rounds go on (a root comparison each), nothing
            # differs, is exchanged below the root or is repaired.
            before = activity(c)
            await trio.sleep(20)
            after = activity(c)
        assert after[1:] == before[1:] and after[0] > before[0], (
            f"seed={seed}: not quiet when idle: (rounds, differing, repaired, branches, "
            f"segments) {before} -> {after}"
        )
        for key in keys:
            clock = await stored(c, victim, key)
            assert clock is not None and clock == await stored(c, owners(c, key)[0], key), (
                f"seed={seed}: {key} differs on {victim}"
            )
        repaired = sum(service(n).anti_entropy.counters.keys_repaired for n in c.nodes.values())
        assert repaired >= len(keys), f"seed={seed}: {repaired} keys repaired"
        assert sum(service(n).counters.read_repairs for n in c.nodes.values()) == 0, f"seed={seed}"
        assert sum(service(n).counters.hints_stored for n in c.nodes.values()) == 0, f"seed={seed}"
        stats = c.nodes[victim].statistics()
        assert stats.anti_entropy_rounds > 0, f"seed={seed}: {stats}"
        print(f"seed={seed}: anti-entropy converged {len(keys)} keys in {took:.1f} s after heal")


async def test_without_anti_entropy_the_missed_writes_stay_missing(
    aeseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """The negative control of the test above: same scenario, anti-entropy off."""
    seed = aeseed
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        victim = "n3"
        keys = victim_keys(c, victim, KEYS)
        with trio.fail_after(WITHIN + 60):
            await write_while_cut_off(c, victim, keys, seed)
            took = await time_to_converge(c, keys, WITHIN)
        assert took is None, f"seed={seed}: converged in {took}s without anti-entropy"
        missing = [k for k in keys if await stored(c, victim, k) is None]
        assert missing == keys, f"seed={seed}: only {missing} missing on {victim}"
        rounds = sum(service(n).anti_entropy.counters.rounds for n in c.nodes.values())
        assert rounds == 0, f"seed={seed}: {rounds} rounds with anti-entropy off"


async def test_a_replica_restarted_empty_gets_its_keys_back(
    aeseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A peer killed and restarted with an empty memory engine. Its rejoin (a new incarnation)
    keeps its place in the table (no re-plan; were there one, the keys checked are those it owns
    in the new table and that some other new owner already held): anti-entropy must bring it
    every one of them, with no reads and no hints."""
    seed = aeseed
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=INTERVAL)
    async with kv_cluster(seed, kv=kv) as c:
        victim = "n3"
        written = [f"rs{i}" for i in range(60)]
        before = {k: owners(c, k) for k in written}
        epoch = table(c.nodes["n1"]).epoch  # type: ignore[union-attr]
        with trio.fail_after(WITHIN + 60):
            for key in written:
                await c.nodes[before[key][0]].put(key, {"k": key}, w=3)
            c.kill(victim)
            # A memory engine: the restarted peer comes back with nothing at all.
            c.storage[victim] = MemoryEngine()
            c.hints[victim] = MemoryEngine()
            await c.restart(victim, seeds=["n1"], kv=kv)
            restarted = trio.current_time()
            assert c.storage[victim].statistics().keys == 0, f"seed={seed}: not empty"
            with trio.move_on_after(30):
                await c.wait_until(lambda: table(c.nodes["n1"]).epoch != epoch)  # type: ignore[union-attr]
            await c.wait_until(lambda: tables_agree(c, names(5)))
            keys = [
                k
                for k in written
                if victim in owners(c, k) and set(owners(c, k)) & set(before[k]) - {victim}
            ]
            assert len(keys) >= 10, f"seed={seed}: only {len(keys)} keys to check"
            took = await time_to_converge(c, keys, WITHIN)
        assert took is not None, f"seed={seed}: not converged within {WITHIN}s"
        lacking = [k for k in keys if await stored(c, victim, k) is None]
        assert lacking == [], f"seed={seed}: {victim} lacks {lacking}"
        took = trio.current_time() - restarted
        print(
            f"seed={seed}: restarted replica holds its {len(keys)} keys {took:.1f} s after restart"
        )


async def test_malformed_tree_requests_get_a_typed_error(
    aeseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = aeseed
    async with kv_cluster(seed, kv=KVConfig(anti_entropy_interval=0)) as c:
        t = table(c.nodes["n1"])
        assert t is not None
        q = t.q
        too_many = tuple(range(ae.MAX_SEGMENTS_PER_REQUEST + 1))
        bad: list[Message] = [
            TreeRoot(q, q),  # partition out of range
            TreeRoot(-1, q),
            TreeRoot(0, q + 1),  # another partition count than the table's
            TreeBranches(q + 100, q),
            TreeBranches(0, 0),
            TreeSegments(0, q, ()),  # no branch
            TreeSegments(0, q, (64,)),  # branch out of range
            TreeSegments(0, q, (3, 3)),  # repeated
            TreeSegments(0, q, (5, 2)),  # out of order
            TreeSegments(0, q, tuple(range(65))),
            TreeKeys(0, q, ()),  # no segment
            TreeKeys(0, q, (4096,)),  # segment out of range
            TreeKeys(0, q, (-1,)),
            TreeKeys(0, q, (9, 9)),
            TreeKeys(0, q, (10, 1)),
            TreeKeys(0, q, too_many),  # too many segments requested
            TreeKeys(q, q, (1,)),
        ]
        with trio.fail_after(30):
            for message in bad:
                with pytest.raises(RemoteError) as info:
                    await c.nodes["n1"]._rt.pool.send_to_member("n2", message)
                assert info.value.code == "bad_request", f"seed={seed}: {message}: {info.value}"
            # n2 keeps serving: every level of the tree, and the data path.
            put = await c.nodes["n2"].put("after-bad", "v", w=3)
            p = partition_of("after-bad", q)
            holder = next(o for o in owners(c, "after-bad") if o != "n1")
            send = c.nodes["n1"]._rt.pool.send_to_member
            root = await send(holder, TreeRoot(p, q))
            assert isinstance(root, TreeHashes) and len(root.hashes) == 8, f"seed={seed}"
            assert root.hashes != bytes(8), f"seed={seed}: empty root"
            branches = await send(holder, TreeBranches(p, q))
            assert isinstance(branches, TreeHashes) and len(branches.hashes) == 64 * 8
            segments = await send(holder, TreeSegments(p, q, (0, 63)))
            assert isinstance(segments, TreeHashes) and len(segments.hashes) == 2 * 64 * 8
            digest = mk.key_digest(b"after-bad")
            items = await send(holder, TreeKeys(p, q, (mk.segment_of(digest),)))
            assert isinstance(items, TreeItems) and items.keys == ("after-bad",), f"seed={seed}"
            assert items.done == 1 and len(items.hashes) == 8, f"seed={seed}: {items}"
            got = await c.nodes["n2"].get("after-bad", r=3)
            assert got.values == ["v"] and got.context == put.context, f"seed={seed}: {got}"


async def test_paging_and_the_repair_limit(
    aeseed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny replies, few segments a request and a tiny repair budget: each ``compare`` repairs
    at most the budget, segments come over several replies, and repeated rounds converge both
    ways (keys missing on either side)."""
    seed = aeseed
    monkeypatch.setattr(ae, "KEYS_PER_REPLY", 1)
    monkeypatch.setattr(ae, "MAX_SEGMENTS_PER_REQUEST", 2)
    monkeypatch.setattr(ae, "MAX_REPAIRS_PER_ROUND", 4)
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        t = table(c.nodes["n1"])
        assert t is not None
        a, b, _ = owners(c, "page0")
        p = partition_of("page0", t.q)
        keys = [k for k in (f"page{i}" for i in range(20_000)) if partition_of(k, t.q) == p][:16]
        only_a, only_b = keys[:8], keys[8:]
        rest = [n for n in names(5) if n not in (a, b)]
        with trio.fail_after(120):
            # Each half written while the other replica was cut off: missing on either side.
            for cut, coordinator, half in ((b, a, only_a), (a, b, only_b)):
                c.partition([cut], [n for n in names(5) if n != cut])
                await wait_unreachable(c, rest, [cut])
                for key in half:
                    await c.nodes[coordinator].put(key, key, w=2)
                c.heal()
                await c.wait_until(
                    lambda: all(set(reachable(c, n)) == set(c.nodes) for n in c.nodes)
                )
            assert [await stored(c, b, k) for k in only_a] == [None] * 8, f"seed={seed}"
            assert [await stored(c, a, k) for k in only_b] == [None] * 8, f"seed={seed}"
            sa, sb = service(c.nodes[a]), service(c.nodes[b])
            rounds = 0
            while (await sa.anti_entropy.trees(t.q)).root(p) != (
                await sb.anti_entropy.trees(t.q)
            ).root(p):
                rounds += 1
                assert rounds <= 10, f"seed={seed}: no convergence in 10 rounds"
                done = await sa.anti_entropy.compare(b, p, t.q)
                assert 0 < done <= 4, f"seed={seed}: round {rounds} repaired {done}"
            for key in keys:
                assert await stored(c, a, key) == await stored(c, b, key), f"seed={seed}: {key}"
        assert await sa.anti_entropy.compare(b, p, t.q) == 0, f"seed={seed}: not quiet when equal"


def _clock(value: object, actor: str) -> Clock:
    return _dvv.update(_dvv.new(None, Sibling(value, False, {})), None, actor)


async def _seed_in_sync(c: SimCluster, count: int) -> list[str]:
    """``count`` keys stored with the same clock on every owner, straight into the engines."""
    keys = [f"sync{i}" for i in range(count)]
    for key in keys:
        clock = _clock({"k": key}, "seed-actor")
        for owner in owners(c, key):
            c.storage[owner].put_nowait(key, clock)
    return keys


def _pairs(c: SimCluster, node: str) -> list[tuple[int, str]]:
    """(partition, other owner) for every partition ``node`` owns and each other owner of it."""
    t = table(c.nodes[node])
    assert t is not None
    return [(p, o) for p, row in enumerate(t.owners) if node in row for o in row if o != node]


@pytest.mark.parametrize("k", [1, 10, 100])
async def test_k_diverged_keys_are_found_with_o_k_exchanges(
    aeseed: int, k: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3,000 keys in sync, then k of them changed on one replica only: comparing its partitions
    with their other owners repairs exactly those k keys, fetching at most k branches and k
    segments; in sync, each partition pair costs one root comparison and nothing else."""
    seed = aeseed
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        t = table(c.nodes["n1"])
        assert t is not None
        victim = "n2"
        keys = await _seed_in_sync(c, 3000)
        anti = service(c.nodes[victim]).anti_entropy
        sent: list[str] = []
        real_send = service(c.nodes[victim]).send

        async def counting_send(peer: str, message: Message) -> Message:
            sent.append(message.TAG)
            return await real_send(peer, message)

        monkeypatch.setattr(service(c.nodes[victim]), "send", counting_send)
        repaired: list[str] = []
        real_repair = anti._repair

        async def recording_repair(peer: str, key: str) -> None:
            repaired.append(key)
            await real_repair(peer, key)

        monkeypatch.setattr(anti, "_repair", recording_repair)
        pairs = _pairs(c, victim)
        first_pairs = dict(reversed(pairs))  # one other owner per partition
        with trio.fail_after(300):
            # In sync: one root comparison per partition pair, nothing more on the wire.
            for p, other in pairs:
                assert await anti.compare(other, p, t.q) == 0, f"seed={seed}: {p} differs"
            counters = anti.counters
            assert counters.tree_roots_compared == len(pairs), f"seed={seed}: {counters}"
            assert (counters.branches_exchanged, counters.segments_exchanged) == (0, 0), (
                f"seed={seed}: {counters}"
            )
            assert sent == ["tree_root"] * len(pairs), f"seed={seed}: {sorted(set(sent))}"
            # k keys of the victim's partitions changed on the victim only.
            mine = [key for key in keys if victim in owners(c, key)]
            diverged = sorted(mine[:: len(mine) // k][:k])
            assert len(diverged) == k, f"seed={seed}"
            for key in diverged:
                c.storage[victim].put_nowait(key, _clock({"k": key, "new": True}, "victim"))
            roots_before = counters.tree_roots_compared
            for p, other in sorted(first_pairs.items()):
                await anti.compare(other, p, t.q)
            assert sorted(repaired) == diverged, f"seed={seed}: repaired {sorted(repaired)}"
            assert counters.tree_roots_compared - roots_before == len(first_pairs), f"seed={seed}"
            assert 0 < counters.branches_exchanged <= k, f"seed={seed}: {counters}"
            assert 0 < counters.segments_exchanged <= k, f"seed={seed}: {counters}"
            assert counters.keys_repaired == k, f"seed={seed}: {counters}"
            # The rest of the owners catch up the same way, then everything is quiet again.
            for p, other in pairs:
                while await anti.compare(other, p, t.q):
                    pass
            for key in diverged:
                assert await all_equal(c, [key]), f"seed={seed}: {key} differs"
            quiet = counters.segments_exchanged
            for p, other in pairs:
                assert await anti.compare(other, p, t.q) == 0, f"seed={seed}"
            assert counters.segments_exchanged == quiet, f"seed={seed}: not quiet"
        print(
            f"seed={seed} k={k}: {counters.branches_exchanged} branches and "
            f"{counters.segments_exchanged} segments exchanged, {counters.keys_repaired} repairs"
        )


async def test_the_scheduled_rebuild_replaces_a_corrupted_tree(
    aeseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    """A live tree flipped in memory (silent corruption) is found by the next scheduled check
    against the store, counted, and replaced by the rebuilt one; intact trees pass their
    checks; anti-entropy then finds the replicas equal again."""
    seed = aeseed
    kv = KVConfig(
        sloppy_quorum=False, anti_entropy_interval=1000.0, anti_entropy_rebuild_interval=30.0
    )
    async with kv_cluster(seed, kv=kv) as c:
        t = table(c.nodes["n1"])
        assert t is not None
        await _seed_in_sync(c, 500)
        victim = "n3"
        anti = service(c.nodes[victim]).anti_entropy
        trees = await anti.trees(t.q)
        p, other = _pairs(c, victim)[0]
        tree = trees.tree(p)
        assert tree is not None, f"seed={seed}"
        tree.toggle(123, 0xBAD)
        assert await anti.compare(other, p, t.q) == 0, f"seed={seed}"
        assert anti.counters.partitions_differing == 1, f"seed={seed}: corruption not seen"
        with trio.fail_after(200):
            async with trio.open_nursery() as writers:
                # Writes go on through the checks: a key written while its partition is read
                # back must not look like corruption.
                async def write() -> None:
                    for i in range(10_000):
                        await c.nodes["n1"].put(f"during{i % 300}", i, w=2)
                        await trio.sleep(0.01)

                writers.start_soon(write)
                await c.wait_until(lambda: anti.counters.trees_checked >= len(trees.partitions()))
                writers.cancel_scope.cancel()
            await trio.sleep(1)  # replication of the last writes lands
        assert anti.counters.tree_mismatches == 1, f"seed={seed}: {anti.counters}"
        # The replaced tree is the one the records give (writes moved it on from good_root).
        fixed = trees.tree(p)
        expected = mk.PartitionTree()
        hashes = c.storage[victim].record_hashes
        for segment in range(mk.SEGMENTS):
            for _, h in hashes.segment(p, t.q, segment):
                expected.toggle(segment, h)
        assert fixed == expected and expected.root != 0, f"seed={seed}"
        for other_p in trees.partitions():
            assert other_p == p or trees.root(other_p) != 0, f"seed={seed}"
        assert await anti.compare(other, p, t.q) == 0, f"seed={seed}"
        assert anti.counters.partitions_differing == 1, f"seed={seed}: still differs"
        # The other peers' intact trees passed their checks.
        for name, node in c.nodes.items():
            if name != victim:
                assert service(node).anti_entropy.counters.tree_mismatches == 0, f"seed={seed}"
        stats = c.nodes[victim].statistics()
        assert stats.anti_entropy_tree_mismatches == 1, f"seed={seed}: {stats}"


def _same_segment_keys(q: int, count: int) -> list[str]:
    """``count`` keys of one partition and one tree segment (found by search)."""
    seen: dict[tuple[int, int], list[str]] = {}
    i = 0
    while True:
        key = f"seg{i}"
        digest = mk.key_digest(key.encode())
        group = seen.setdefault((digest % q, mk.segment_of(digest)), [])
        group.append(key)
        if len(group) == count:
            return group
        i += 1


async def test_a_segment_larger_than_a_reply_comes_over_several(
    aeseed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seven keys of one segment, two to a reply: some only on one replica, some only on the
    other, one with differing clocks. One compare finds and repairs every one, resuming the
    segment after the last key of each reply, and counts the segment once."""
    seed = aeseed
    monkeypatch.setattr(ae, "KEYS_PER_REPLY", 2)
    kv = KVConfig(sloppy_quorum=False, anti_entropy_interval=0)
    async with kv_cluster(seed, kv=kv) as c:
        t = table(c.nodes["n1"])
        assert t is not None
        keys = sorted(_same_segment_keys(t.q, 7))
        a, b, _ = owners(c, keys[0])
        for i, key in enumerate(keys):
            clock = _clock({"k": key}, "seeded")
            if i % 3 != 1:
                c.storage[a].put_nowait(key, clock)
            if i % 3 != 0:
                c.storage[b].put_nowait(key, clock if i != 5 else _clock({"other": key}, "b"))
        anti = service(c.nodes[a]).anti_entropy
        p = partition_of(keys[0], t.q)
        with trio.fail_after(60):
            repaired = await anti.compare(b, p, t.q)
            differing = [k for i, k in enumerate(keys) if i % 3 != 2 or i == 5]
            assert repaired == len(differing), f"seed={seed}: {repaired} of {differing}"
            assert anti.counters.segments_exchanged == 1, f"seed={seed}: {anti.counters}"
            assert anti.counters.branches_exchanged == 1, f"seed={seed}: {anti.counters}"
            assert await anti.compare(b, p, t.q) == 0, f"seed={seed}: not equal after one"
        for key in keys:
            assert await stored(c, a, key) == await stored(c, b, key), f"seed={seed}: {key}"
