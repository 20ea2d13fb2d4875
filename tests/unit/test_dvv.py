"""DVVSet: the dvvset.erl reference vectors, the Basho scenarios, and property tests."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv._codec import dumps_canonical, loads_value
from gossipkv._dvv import (
    ActorMint,
    DVVSet,
    Entry,
    Sibling,
    clock_from_plain,
    clock_to_plain,
    context_from_plain,
    context_to_plain,
    equal,
    join,
    less,
    new,
    partition_of,
    sync,
    sync_all,
    update,
    validate,
    values,
)
from gossipkv._errors import InvalidClock, TooManySiblings


def C(entries: list[tuple[str, int, list[str]]], anon: list[str] | None = None) -> DVVSet[str]:
    return DVVSet(tuple(Entry(a, n, tuple(vs)) for a, n, vs in entries), tuple(anon or []))


# --- d.1 reference vectors ------------------------------------------------------------------


def test_join() -> None:
    a = update(new(None, "v1"), None, "a")
    assert join(a) == {"a": 1}
    b = update(new(join(a), "v2"), a, "b")
    assert join(b) == {"a": 1, "b": 1}


def test_update() -> None:
    a0 = update(new(None, "v1"), None, "a")
    assert a0 == C([("a", 1, ["v1"])])
    a1 = update(new({"a": 1}, "v2"), a0, "a")
    assert a1 == C([("a", 2, ["v2"])])
    a2 = update(new(join(a1), "v3"), a1, "b")
    assert a2 == C([("a", 2, []), ("b", 1, ["v3"])])
    a3 = update(new(join(a0), "v4"), a1, "b")
    assert a3 == C([("a", 2, ["v2"]), ("b", 1, ["v4"])])
    a4 = update(new(join(a0), "v5"), a1, "a")
    assert a4 == C([("a", 3, ["v5", "v2"])])


def test_sync() -> None:
    w = C([("a", 1, [])])
    z = C([("a", 2, ["v2", "v1"])])
    assert sync(w, z) == C([("a", 2, ["v2"])])
    assert sync(z, w) == sync(w, z)
    x = C([("x", 1, ["vx"])])
    y = C([("y", 1, ["vy"])])
    both = sync(x, y)
    assert both == C([("x", 1, ["vx"]), ("y", 1, ["vy"])])
    assert sorted(values(both)) == ["vx", "vy"]
    assert sync_all([x, y, both, w]) == sync(both, w)


def test_sync_update_riak_vector() -> None:
    # dvvset.erl sync_update_test: a blind write and a write with an older context.
    a0 = update(new(None, "v1"), None, "a")
    vv1 = join(a0)
    a1 = update(new(None, "v2"), a0, "a")
    a2 = update(new(vv1, "v3"), a1, "a")
    assert values(a1) == ["v2", "v1"]
    assert join(a1) == {"a": 2}
    assert values(a2) == ["v3", "v2"]
    assert join(a2) == {"a": 3}


def test_mary_peter() -> None:
    a0 = update(new(None, "v1"), None, "a")
    peter_ctx = join(a0)
    mary = update(new(None, "v2"), a0, "a")
    assert mary == C([("a", 2, ["v2", "v1"])])
    peter = update(new(peter_ctx, "v3"), mary, "a")
    assert peter == C([("a", 3, ["v3", "v2"])])


def test_less() -> None:
    a = update(new(None, "v1"), None, "a")
    b = update(new(join(a), "v2"), a, "a")
    c = update(new(None, "v3"), a, "b")
    d = update(new(join(a), "v4"), a, "c")
    assert less(a, b)
    assert not less(b, a)
    assert less(a, c)
    assert not less(a, a)
    assert not less(b, c) and not less(c, b)
    assert not less(c, d) and not less(d, c)
    assert less(C([("a", 1, [])]), C([("a", 1, []), ("b", 1, [])]))


def test_equal() -> None:
    assert equal(C([("a", 2, ["x"])]), C([("a", 2, ["y"])]))
    assert not equal(C([("a", 2, ["x"])]), C([("a", 2, [])]))


# --- d.2 sibling explosion ------------------------------------------------------------------


def test_sibling_explosion_step_by_step() -> None:
    s = update(new(None, "Bob"), None, "a")
    y_ctx = join(s)
    assert values(s) == ["Bob"] and y_ctx == {"a": 1}
    s = update(new(None, "Sue"), s, "a")
    x_ctx = join(s)
    assert values(s) == ["Sue", "Bob"] and x_ctx == {"a": 2}
    s = update(new(y_ctx, "Rita"), s, "a")
    assert values(s) == ["Rita", "Sue"] and join(s) == {"a": 3}
    s = update(new(x_ctx, "Michelle"), s, "a")
    assert values(s) == ["Michelle", "Rita"] and join(s) == {"a": 4}


class PlainVV:
    """Negative control: one version vector per key, no dots (Riak before DVV)."""

    def __init__(self) -> None:
        self.vv: dict[str, int] = {}
        self.vals: list[object] = []

    def put(self, ctx: dict[str, int], value: object, actor: str) -> dict[str, int]:
        dominates = all(ctx.get(a, 0) >= n for a, n in self.vv.items())
        self.vals = [value] if dominates else [*self.vals, value]
        merged = {a: max(ctx.get(a, 0), self.vv.get(a, 0)) for a in {*ctx, *self.vv}}
        merged[actor] = merged.get(actor, 0) + 1
        self.vv = merged
        return dict(merged)


def test_plain_vv_negative_control_explodes() -> None:
    vv = PlainVV()
    y_ctx = vv.put({}, "Bob", "a")
    x_ctx = vv.put({}, "Sue", "a")
    vv.put(y_ctx, "Rita", "a")
    assert vv.vals == ["Bob", "Sue", "Rita"]
    vv.put(x_ctx, "Michelle", "a")
    assert len(vv.vals) == 4


def _two_clients(iterations: int, dotted: bool) -> tuple[int, set[int], set[int]]:
    """riak_test sibling_explosion: two clients alternately union what they saw, add an int, put."""
    stored: DVVSet[tuple[int, ...]] | None = None
    vv = PlainVV()
    seen: dict[str, tuple[dict[str, int], list[tuple[int, ...]]]] = {
        "c1": ({}, []),
        "c2": ({}, []),
    }
    written: set[int] = set()
    nxt = {"c1": 0, "c2": 1}
    for _ in range(iterations):
        for client in ("c1", "c2"):
            ctx, vals = seen[client]
            union = set().union(*vals) | {nxt[client]}
            written.add(nxt[client])
            nxt[client] += 2
            value = tuple(sorted(union))
            if dotted:
                stored = update(new(ctx, value), stored, "a")
                seen[client] = (join(stored), values(stored))
            else:
                ctx2 = vv.put(ctx, value, "a")
                seen[client] = (ctx2, [v for v in vv.vals if isinstance(v, tuple)])
    final = values(stored) if dotted and stored is not None else vv.vals
    union_final: set[int] = set()
    for v in final:
        assert isinstance(v, tuple)
        union_final |= set(v)
    return len(final), union_final, written


def test_two_clients_100_iterations_end_with_two_siblings() -> None:
    count, union_final, written = _two_clients(100, dotted=True)
    assert count == 2
    assert written <= union_final


def test_two_clients_plain_vv_explodes() -> None:
    count, union_final, written = _two_clients(100, dotted=False)
    assert count > 100
    assert written <= union_final


# --- server actors, partitions, plain form ----------------------------------------------------


def test_actor_mint_new_epoch_for_unknown_key() -> None:
    mint = ActorMint("n1", 7)
    a1 = mint.actor_for(None)
    a2 = mint.actor_for(None)
    assert a1 != a2
    clock = update(new(None, "x"), None, a1)
    assert mint.actor_for(clock) == a1
    # another incarnation (a restart, or a lost disk) never reuses the first one's actors
    other = ActorMint("n1", 8)
    assert other.actor_for(clock) not in {a1, a2}
    with pytest.raises(ValueError):
        ActorMint("bad/name", 1)


def test_partition_of_is_stable() -> None:
    assert partition_of("cart:1", 64) == partition_of("cart:1", 64)
    assert {partition_of(f"k{i}", 8) for i in range(200)} == set(range(8))
    with pytest.raises(ValueError):
        partition_of("x", 0)


def test_plain_roundtrip_and_canonical_bytes() -> None:
    a = update(new(None, Sibling({"b": 1, "a": [1, 2]}, meta={"z": 1, "hlc": 5})), None, "n/1/0")
    b = update(new(None, Sibling.deleted()), a, "m/1/0")
    plain = clock_to_plain(b)
    back = clock_from_plain(loads_value(dumps_canonical(plain)))
    assert back == b
    # equal clocks give equal bytes even when maps were built in another order
    b2 = update(
        new(None, Sibling.deleted()),
        update(new(None, Sibling({"a": [1, 2], "b": 1}, meta={"hlc": 5, "z": 1})), None, "n/1/0"),
        "m/1/0",
    )
    assert dumps_canonical(clock_to_plain(b2)) == dumps_canonical(plain)
    ctx = join(b)
    assert context_from_plain(loads_value(dumps_canonical(context_to_plain(ctx)))) == ctx


@pytest.mark.parametrize(
    "raw",
    [
        None,
        [],
        [[["a", 1, []]], [[None, False, {}]]],  # anonymous value
        [[["b", 1, []], ["a", 1, []]], []],  # unsorted
        [[["a", 1, []], ["a", 2, []]], []],  # repeated
        [[["a", 0, []]], []],  # counter < 1
        [[["a", 1, [[1, False, {}], [2, False, {}]]]], []],  # more values than events
        [[["a", True, []]], []],
        [[["", 1, []]], []],
        [[["a", 1, [[1, True, {}]]]], []],  # tombstone with data
        [[["a", 1, [[1, False, {1: 2}]]]], []],  # meta key not text
        [[["a", 1, ["not a sibling"]]], []],
    ],
)
def test_clock_from_plain_rejects(raw: object) -> None:
    with pytest.raises(InvalidClock):
        clock_from_plain(raw)


def test_too_many_siblings() -> None:
    s: DVVSet[Sibling] | None = None
    for i in range(5):
        s = update(new(None, Sibling(i)), s, "a")
    assert s is not None
    validate(s, max_siblings=5)
    with pytest.raises(TooManySiblings):
        validate(s, max_siblings=4)
    with pytest.raises(TooManySiblings):
        clock_from_plain(clock_to_plain(s), max_siblings=4)


@pytest.mark.parametrize("raw", [None, [["a"]], [["a", 0]], [["a", 1], ["a", 2]], [[1, 1]]])
def test_context_from_plain_rejects(raw: object) -> None:
    with pytest.raises(InvalidClock):
        context_from_plain(raw)


def test_update_requires_new_clock() -> None:
    with pytest.raises(InvalidClock):
        update(C([("a", 1, ["x"])]), None, "a")


# --- property tests ----------------------------------------------------------------------------

ACTORS = ["r0", "r1", "r2"]


History = tuple[list[DVVSet[int]], dict[int, tuple[str, int]], list[dict[str, int]]]


def _run_history(seed: int, steps: int) -> History:
    """Random interleaving of clients writing (with stale or fresh contexts) and replicas syncing.

    Returns every clock ever held, each written value's dot, and every write's context.
    """
    rng = random.Random(seed)
    replicas: list[DVVSet[int] | None] = [None, None, None]
    clients: list[dict[str, int]] = [{} for _ in range(3)]
    history: list[DVVSet[int]] = []
    dots: dict[int, tuple[str, int]] = {}
    contexts: list[dict[str, int]] = []
    next_value = 0
    for _ in range(steps):
        op = rng.random()
        r = rng.randrange(3)
        if op < 0.45:
            c = rng.randrange(3)
            ctx = clients[c] if rng.random() < 0.8 else {}
            value = next_value
            next_value += 1
            stored = update(new(ctx, value), replicas[r], ACTORS[r])
            replicas[r] = stored
            entry = next(e for e in stored.entries if e.actor == ACTORS[r])
            dots[value] = (ACTORS[r], entry.counter)
            contexts.append(dict(ctx))
            clients[c] = join(stored)
            history.append(stored)
        elif op < 0.75:
            other = rng.randrange(3)
            src, dst = replicas[other], replicas[r]
            if src is not None:
                replicas[r] = src if dst is None else sync(dst, src)
                history.append(replicas[r])  # type: ignore[arg-type]
        else:
            c = rng.randrange(3)
            cur = replicas[r]
            if cur is not None:
                clients[c] = join(cur)
    history.extend(x for x in replicas if x is not None)
    return history, dots, contexts


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 60))
def test_random_interleavings_never_drop_unsuperseded_values(seed: int, steps: int) -> None:
    history, dots, contexts = _run_history(seed, steps)
    final = sync_all(history)
    survivors = set(values(final))
    for value, (actor, n) in dots.items():
        superseded = any(ctx.get(actor, 0) >= n for ctx in contexts)
        if not superseded:
            assert value in survivors, f"value {value} dropped (seed={seed})"
        else:
            assert value not in survivors, f"value {value} resurrected (seed={seed})"


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 40), st.data())
def test_sync_is_a_semilattice_join(seed: int, steps: int, data: st.DataObject) -> None:
    history, _, _ = _run_history(seed, steps)
    if not history:
        return
    pick = st.sampled_from(history)
    x, y, z = data.draw(pick), data.draw(pick), data.draw(pick)
    assert sync(x, y) == sync(y, x)
    assert sync(sync(x, y), z) == sync(x, sync(y, z))
    assert sync(x, x) == x
    assert set(values(sync(x, y))) <= set(values(x)) | set(values(y))
    assert not less(sync(x, y), x) and not less(sync(x, y), y)
