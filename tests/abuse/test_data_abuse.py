"""Issue 10, data damage: what a client writes can never make a key unreadable, outgrow the
frame, exceed the sibling cap on a read, or lose an acknowledged value; undecodable records on
disk are quarantined and repaired, never fatal.

Three real peers with data dirs (N=3: every peer is a replica of every key), attacked through the
normal client API (``gossipkv.open_client``) with hostile values and forged contexts.
"""

from __future__ import annotations

import signal
from typing import Any

import cbor2
import pytest
import trio

import gossipkv
from gossipkv._messages import KvPut

from ..proc._peers import eventually
from . import _expect
from ._attack import (
    HINT_SEP,
    UNREADABLE_CLOCKS,
    context_pairs,
    forged_context,
    message_frame,
    nested,
    plant_records,
    raw_request,
)
from ._cluster import Cluster, client_of, observing
from ._invariants import (
    Acked,
    assert_acked,
    assert_alive,
    assert_counted,
    assert_no_false_downs,
    assert_rss_bounded,
    local_read,
    print_figures,
    write_before,
)

pytestmark = [pytest.mark.abuse, pytest.mark.proc]

# --- attack parameters -----------------------------------------------------------------------------
DEEP_DEPTHS = (61, 62, 63)  # one blind put of each, through a different peer
DEEP_OVER_LIMIT = _expect.MAX_VALUE_DEPTH + 8  # over the peers' limit, maybe not the client's
FORGED_COUNTER = 2**64 - 1  # the largest CBOR unsigned integer; the next dot would be 2**64
MADE_UP_ACTORS = 10_000
BIG_PUTS = 20  # blind puts to one key, spread over the peers
BIG_VALUE_BYTES = 2**20 - 100  # each within the value limit; together more than a frame
STORM_WRITES = 180  # concurrent blind writes to one key
STORM_CLIENTS = 6
STORM_MAX_ROUNDS = 10  # read-then-resolve rounds allowed before every acked value was seen


def outcome_of(exc: BaseException | None) -> str:
    return "ok" if exc is None else f"{type(exc).__name__}: {exc}"


async def try_put(addr: str, key: str, value: Any, **kw: Any) -> tuple[Any, BaseException | None]:
    async with client_of(addr) as c:
        try:
            return await c.put(key, value, **kw), None
        except gossipkv.GossipKVError as exc:
            return None, exc


async def test_deep_values_are_refused_and_the_key_stays_readable(cluster: Cluster) -> None:
    acked = Acked()
    await write_before(cluster, acked, "deep", count=3)
    async with client_of(cluster.addr(cluster.names[0])) as c:
        await acked.put(c, "deep", "before", w=3)
        # A moderately nested value is fine.
        await acked.put(c, "deep-ok", nested(_expect.MAX_VALUE_DEPTH // 2), w=3)
    before = await cluster.stats()

    outcomes: dict[int, BaseException | None] = {}
    raw: dict[str, str] = {}
    async with observing(cluster) as obs:
        # Through the normal client API, each through another peer...
        for depth, name in zip(DEEP_DEPTHS, cluster.names, strict=False):
            _, outcomes[depth] = await try_put(cluster.addr(name), "deep", nested(depth))
        _, outcomes[DEEP_OVER_LIMIT] = await try_put(
            cluster.addr(cluster.names[0]), "deep", nested(DEEP_OVER_LIMIT)
        )
        # ...and as raw frames, past any check the client makes, to every peer.
        for depth in (*DEEP_DEPTHS, DEEP_OVER_LIMIT):
            for name in cluster.names:
                answer = await raw_request(
                    cluster.addr(name), message_frame(KvPut("deep", nested(depth)))
                )
                raw[f"{depth}@{name}"] = "closed" if answer is None else f"{answer[2]} {answer[3]}"
    print(f"\n[abuse] deep values: { {d: outcome_of(e) for d, e in outcomes.items()} }")
    print(f"[abuse] deep values as raw frames: {raw}")

    assert_alive(cluster)
    await assert_acked(cluster, acked)
    wrong = {
        d: outcome_of(e)
        for d, e in outcomes.items()
        if not isinstance(e, _expect.REFUSED_DEEP_VALUE)
    }
    assert not wrong, f"deep puts not refused with {_expect.REFUSED_DEEP_VALUE}: {wrong}"
    accepted = {k: v for k, v in raw.items() if v.startswith("kv_result")}
    assert not accepted, f"raw deep puts accepted: {accepted}"
    deltas = await assert_counted(cluster, before, "deep_value", within=_expect.COUNTER_WITHIN)
    assert_no_false_downs(obs)
    print_figures("deep_value", cluster, obs, await cluster.stats(), deltas)

    # Across restarts: every peer killed and started again on its data dir.
    await cluster.restart_all_crashed()
    await assert_acked(cluster, acked)


async def test_forged_counter_in_a_context_never_bricks_the_key(cluster: Cluster) -> None:
    a, b = cluster.addr(cluster.names[0]), cluster.addr(cluster.names[1])
    acked = Acked()
    async with client_of(a) as ca, client_of(b) as cb:
        first = await acked.put(ca, "forged", "v1", w=3)
        await acked.put(cb, "forged", "v2", w=3)  # a concurrent sibling from another actor
    (actor, _), *_ = context_pairs(first.context)
    forged = forged_context([(actor, FORGED_COUNTER)])
    before = await cluster.stats()

    async with observing(cluster) as obs:
        result, exc = await try_put(a, "forged", "forged", context=forged)
    print(f"\n[abuse] forged counter: {outcome_of(exc)}")

    assert_alive(cluster)
    if exc is None:
        # Clamped and accepted: it replaced what the real actor had written (v1), nothing else.
        acked.forget("forged", "v1")
        acked.add("forged", "forged")
    await assert_acked(cluster, acked)
    # The key still takes writes: a new dot can be minted by every coordinator.
    for name in cluster.names:
        async with client_of(cluster.addr(name)) as c:
            await acked.put(c, "forged", f"after-{name}", w=3)
    await assert_acked(cluster, acked)
    if exc is not None:
        assert isinstance(exc, _expect.REFUSED_FORGED_CONTEXT), outcome_of(exc)
        deltas = await assert_counted(
            cluster, before, "forged_counter", within=_expect.COUNTER_WITHIN
        )
    else:
        assert result is not None and "forged" in result.values, result
        deltas = {}
    assert_no_false_downs(obs)
    print_figures("forged_counter", cluster, obs, await cluster.stats(), deltas)

    # The coordinator leaves gracefully and comes back on its data dir.
    code = await cluster.restart_gracefully(cluster.names[0])
    assert code == 0, f"graceful leave exited {code}"
    await assert_acked(cluster, acked)


async def test_made_up_actors_in_a_context_are_not_stored(cluster: Cluster) -> None:
    a, b = cluster.addr(cluster.names[0]), cluster.addr(cluster.names[1])
    acked = Acked()
    async with client_of(a) as c:
        first = await acked.put(c, "actors", "v1", w=3)
    real = context_pairs(first.context)
    fake = [(f"made-up-{i:05d}", 1) for i in range(MADE_UP_ACTORS)]
    before = await cluster.stats()

    async with observing(cluster) as obs:
        result, exc = await try_put(b, "actors", "m2", context=forged_context(real + fake), w=3)
    print(f"\n[abuse] made-up actors: {outcome_of(exc)}")

    assert_alive(cluster)
    if exc is None:
        acked.forget("actors", "v1")  # the real part of the context covered it
        acked.add("actors", "m2")
    await assert_acked(cluster, acked)
    for name in cluster.names:
        got = await local_read(cluster.addr(name), "actors")
        assert not isinstance(got, str), f"{name}: {got}"
        stored = [actor for actor, _ in context_pairs(got.context) if actor.startswith("made-up")]
        assert not stored, f"{name} keeps {len(stored)} made-up actors in the clock"
    if exc is not None:
        assert isinstance(exc, _expect.REFUSED_FORGED_CONTEXT), outcome_of(exc)
        deltas = await assert_counted(
            cluster, before, "made_up_actors", within=_expect.COUNTER_WITHIN
        )
    else:
        assert result is not None
        deltas = {}
    assert_no_false_downs(obs)
    print_figures("made_up_actors", cluster, obs, await cluster.stats(), deltas)


async def test_one_key_cannot_outgrow_the_frame(cluster: Cluster) -> None:
    acked = Acked()
    await write_before(cluster, acked, "big", count=3)
    before = await cluster.stats()
    outcomes: list[str] = []
    refused: list[BaseException] = []
    async with observing(cluster) as obs:
        for i in range(BIG_PUTS):
            addr = cluster.addrs[i % len(cluster.addrs)]
            value = bytes([i]) * BIG_VALUE_BYTES
            _, exc = await try_put(addr, "big", value)
            outcomes.append(outcome_of(exc)[:60])
            if exc is None:
                acked.add("big", value)
            elif not isinstance(exc, gossipkv.QuorumNotReached):
                refused.append(exc)
        # Reads keep working while the attack's data is there.
        await assert_acked(cluster, acked)
    print(f"\n[abuse] big key: {outcomes}")

    assert_alive(cluster)
    assert refused, "no put was refused although the key would outgrow the frame"
    wrong = [outcome_of(e) for e in refused if not isinstance(e, _expect.REFUSED_RECORD_TOO_LARGE)]
    assert not wrong, f"refused with the wrong error: {wrong}"
    after = await cluster.stats()
    deltas = await assert_counted(
        cluster, before, "record_too_large", within=_expect.COUNTER_WITHIN
    )
    assert "too_large" not in deltas.get("dropped_frames", {}), (
        f"peer links dropped frames: {deltas}"
    )
    assert_no_false_downs(obs)
    assert_rss_bounded(cluster, obs.rss.peak)
    print_figures("record_too_large", cluster, obs, after, deltas)


async def test_sibling_storm_reads_stay_capped_and_lose_nothing(cluster: Cluster) -> None:
    acked = Acked()
    errors: dict[str, int] = {}

    async def writer(client: gossipkv.Client, first: int) -> None:
        async def one(i: int) -> None:
            try:
                await acked.put(client, "storm", f"s{i}")
            except gossipkv.GossipKVError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        async with trio.open_nursery() as nursery:
            for i in range(first, STORM_WRITES, STORM_CLIENTS):
                nursery.start_soon(one, i)

    async with observing(cluster) as obs:
        async with trio.open_nursery() as clients:
            async with trio.open_nursery() as writers:
                for k in range(STORM_CLIENTS):
                    addr = cluster.addrs[k % len(cluster.addrs)]
                    client = await clients.start(_open_client, addr)
                    writers.start_soon(writer, client, k)
            clients.cancel_scope.cancel()
        print(f"\n[abuse] sibling storm: {len(acked.values.get('storm', ()))} acked, {errors}")

        # Every read answers at most the cap, whatever R and whichever peer coordinates.
        counts = {}
        for name in cluster.names:
            async with client_of(cluster.addr(name)) as c:
                counts[f"{name} local"] = len((await c.get("storm", local=True)).values)
                for r in (1, 2, 3):
                    counts[f"{name} r={r}"] = len((await c.get("storm", r=r)).values)
        print(f"[abuse] sibling storm read sizes: {counts}")
        assert max(counts.values()) <= _expect.MAX_SIBLINGS, counts

        # Resolving in rounds shows every acknowledged value; a context covers exactly what its
        # read returned (nothing it returned comes back, nothing it did not return is lost).
        want = set(acked.values.get("storm", set()))
        seen: set[Any] = set()
        resolved: set[Any] = set()
        async with client_of(cluster.addr(cluster.names[0])) as c:
            for round_ in range(STORM_MAX_ROUNDS):
                got = await c.get("storm", r=3)
                values = set(got.values)
                assert len(got.values) <= _expect.MAX_SIBLINGS, (round_, len(got.values))
                back = values & resolved
                assert not back, f"round {round_}: values replaced earlier came back: {back}"
                seen |= values
                if want <= seen:
                    break
                await c.put("storm", f"resolved-{round_}", context=got.context, w=3)
                resolved |= values
        lost = want - seen
        assert not lost, f"{len(lost)} acknowledged values never seen: {sorted(lost)[:10]}"
    assert_alive(cluster)
    assert_no_false_downs(obs)
    print_figures("sibling_storm", cluster, obs, await cluster.stats(), {})


async def _open_client(addr: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    async with client_of(addr) as c:
        task_status.started(c)
        await trio.sleep_forever()


async def test_value_of_exactly_one_mib_is_accepted(cluster: Cluster) -> None:
    exact = b"x" * (_expect.MAX_VALUE_BYTES - 5)  # 5 bytes of CBOR head: 1 MiB encoded
    assert len(cbor2.dumps(exact)) == _expect.MAX_VALUE_BYTES
    over = b"y" * (_expect.MAX_VALUE_BYTES - 4)
    acked = Acked()
    before = await cluster.stats()
    async with client_of(cluster.addr(cluster.names[0])) as c:
        await acked.put(c, "exact", exact, w=3)
        with pytest.raises(gossipkv.ValueTooLarge):
            await c.put("exact-over", over)
    await assert_acked(cluster, acked)
    await assert_counted(cluster, before, "value_too_large", within=_expect.COUNTER_WITHIN)


async def test_unreadable_records_on_disk_are_quarantined_and_repaired(cluster: Cluster) -> None:
    victim, owner = cluster.names[2], cluster.names[0]
    acked = Acked()
    async with client_of(cluster.addr(owner)) as c:
        for kind in UNREADABLE_CLOCKS:
            await acked.put(c, f"disk-{kind}", f"value-{kind}", w=3)
        await acked.put(c, "disk-hinted", "value-hinted", w=3)

    cluster.signal(victim, signal.SIGKILL)
    await cluster.wait_exit(victim)
    data = {f"disk-{kind}": raw for kind, raw in UNREADABLE_CLOCKS.items()}
    plant_records(cluster.data_dir(victim) / "data", data)
    hints = {f"{owner}{HINT_SEP}disk-hinted": UNREADABLE_CLOCKS["too_deep"]}
    hints[f"{owner}{HINT_SEP}disk-not-stored"] = UNREADABLE_CLOCKS["dot_over_2_64"]
    plant_records(cluster.data_dir(victim) / "hints", hints)
    cluster.start_peer(victim)

    async def serving_or_dead() -> Any:
        return victim not in cluster.alive() or await cluster.is_formed()

    await eventually(serving_or_dead, within=30, what=f"{victim} serving", peers=cluster.peers)
    assert_alive(cluster)
    await cluster.wait_ready()
    # Quorum reads (R=3, through every peer) repair the quarantined copies; then every replica,
    # the damaged one included, serves the acknowledged values locally.
    await assert_acked(cluster, acked, within=30.0)
    async with client_of(cluster.addr(victim)) as c:
        missing = await c.get("disk-not-stored")
        assert not missing.found, missing
