"""Transfers under faults (issue 12): a source that sends garbage pages, and a stream cut mid-way.

A page that is not a valid continuation of the transfer (keys and clocks unpaired, keys out of
order, a key of another partition, a clock that does not decode) is refused whole: nothing of it
is stored, the cursor stays, ``transfer_bad_pages`` counts it, and the page is asked for again.
A cut stream resumes from its cursor, never from the start, and confirms once. Simulated
clusters under an autojump MockClock, across seeds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from gossipkv import GossipConfig, TransportError, _transfer
from gossipkv._dvv import partition_of
from gossipkv._messages import PartitionFetch, PartitionItems
from gossipkv.testing import SimCluster

from ._kvsim import kv_cluster, names, owners, service, table, tables_agree

SEEDS = [31, 32, 33]
KEEP = GossipConfig(remove_after=600.0, handoff_timeout=60.0)
GARBAGE = ["unpaired", "out_of_order", "foreign_key", "bad_clock"]


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def fseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


def foreign_key(after: str, partition: int, q: int) -> str:
    """A key sorting right after ``after`` that belongs to a partition other than ``partition``."""
    for i in range(1000):
        key = f"{after}~evil{i}"
        if partition_of(key, q) != partition:
            return key
    raise AssertionError("no foreign key")


async def lacking(c: SimCluster, name: str, keys: dict[str, int]) -> list[str]:
    """The keys ``name`` owns whose value its own replica lacks."""
    node = c.nodes[name]
    return [
        key
        for key, value in keys.items()
        if name in owners(c, key) and value not in (await node.get(key, local=True)).values
    ]


async def load(c: SimCluster) -> dict[str, int]:
    """240 keys written at W=3 through the four members."""
    keys = {f"k{i}": i for i in range(240)}
    with trio.fail_after(120):
        for i, (key, value) in enumerate(keys.items()):
            await c.nodes[f"n{i % 4 + 1}"].put(key, value, w=3)
    return keys


def spoil(kind: str, page: PartitionItems, partition: int, q: int) -> PartitionItems:
    keys, clocks = list(page.keys), list(page.clocks)
    if kind == "unpaired":
        clocks.pop()
    elif kind == "out_of_order":
        keys.reverse()
        clocks.reverse()
    elif kind == "foreign_key":
        keys[-1] = foreign_key(keys[-2], partition, q)  # in order, in the wrong partition
    else:
        clocks[0] = b"\xff\xfe garbage"
    return PartitionItems(tuple(keys), tuple(clocks), page.more, page.total)


async def test_garbage_pages_are_refused_and_the_pull_finishes_once_the_source_heals(
    fseed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "PAGE_KEYS", 4)
    async with kv_cluster(fseed, n=4, config=KEEP) as c:
        keys = await load(c)
        sent: list[tuple[str, str]] = []  # (kind, key refused)

        def hostile(
            real: Callable[[str, PartitionFetch], Awaitable[PartitionItems]],
        ) -> Callable[[str, PartitionFetch], Awaitable[PartitionItems]]:
            async def handle(receiver: str, message: PartitionFetch) -> PartitionItems:
                page = await real(receiver, message)
                if (
                    receiver != "n5"
                    or message.done
                    or len(page.keys) < 2
                    or len(sent) >= 2 * len(GARBAGE)
                ):
                    return page
                kind = GARBAGE[len(sent) % len(GARBAGE)]
                bad = spoil(kind, page, message.partition, message.q)
                sent.append((kind, bad.keys[-1]))
                return bad

            return handle

        for name in names(4):
            source = service(c.nodes[name]).transfer_source
            source.handle = hostile(source.handle)  # type: ignore[method-assign]
        await c.start("n5", seeds=["n1"])
        n5 = c.nodes["n5"]
        with trio.fail_after(300):
            await c.wait_until(lambda: tables_agree(c, names(5)))
            await c.wait_until(lambda: service(n5).transfers.filled())
        where = f"seed {fseed}"
        stats = n5.statistics()
        assert len(sent) == 2 * len(GARBAGE), f"{where}: only {len(sent)} garbage pages were sent"
        assert stats.transfer_bad_pages == len(sent), f"{where}: {stats.transfer_bad_pages}"
        t = table(n5)
        assert t is not None
        for kind, key in sent:
            if kind == "foreign_key":
                assert await service(n5).storage.get(key) is None, f"{where}: stored {key}"
        missing = await lacking(c, "n5", keys)
        assert missing == [], f"{where}: n5 lacks {missing[:10]} after the source healed"


async def test_a_cut_transfer_resumes_from_its_cursor_and_confirms_once(
    fseed: int, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_transfer, "PAGE_KEYS", 4)
    async with kv_cluster(fseed, n=4, config=KEEP) as c:
        keys = await load(c)
        await c.start("n5", seeds=["n1"])
        n5 = c.nodes["n5"]
        transfers = service(n5).transfers
        real = transfers._fetch
        asked: list[tuple[str, int, str, bool, bool]] = []  # source, partition, after, done, cut
        calls = 0

        async def cutting(member: str, message: PartitionFetch) -> PartitionItems:
            nonlocal calls
            calls += 1
            cut = not message.done and bool(message.after) and calls % 3 == 0
            asked.append((member, message.partition, message.after, message.done, cut))
            if cut:
                raise TransportError(f"link to {member} cut mid-stream")
            return await real(member, message)

        transfers._fetch = cutting  # type: ignore[method-assign]
        with trio.fail_after(300):
            await c.wait_until(lambda: tables_agree(c, names(5)))
            await c.wait_until(lambda: transfers.filled())
        where = f"seed {fseed}"
        cuts = [a for a in asked if a[4]]
        assert cuts, f"{where}: no page was cut"
        assert n5.statistics().transfer_errors >= len(cuts), where
        # After a cut, the next page of that transfer starts where the cut one did.
        for i, (source, p, after, _done, cut) in enumerate(asked):
            if not cut:
                continue
            nxt = next(a for a in asked[i + 1 :] if a[0] == source and a[1] == p)
            assert nxt[2] == after, f"{where}: partition {p} from {source} restarted at {nxt[2]!r}"
        # Cursors of one transfer never go back, and each transfer confirms exactly once.
        streams: dict[tuple[str, int], list[str]] = {}
        confirmed: dict[tuple[str, int], int] = {}
        for source, p, after, done, _ in asked:
            if done:
                confirmed[(source, p)] = confirmed.get((source, p), 0) + 1
            else:
                streams.setdefault((source, p), []).append(after)
        for ident, afters in streams.items():
            assert afters == sorted(afters), f"{where}: {ident} went back: {afters}"
            assert confirmed.get(ident) == 1, f"{where}: {ident} confirmed {confirmed.get(ident)}x"
        missing = await lacking(c, "n5", keys)
        assert missing == [], f"{where}: n5 lacks {missing[:10]}"
