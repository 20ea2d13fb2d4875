"""The sans-IO membership core, without any network: detector, namespaces, deltas, decisions."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv import _codec
from gossipkv._hlc import HybridClock, unpack
from gossipkv._messages import DigestEntry, Kind, SynAck
from gossipkv._partitions import PartitionTable
from gossipkv.membership._detector import ArrivalWindow, DetectorConfig
from gossipkv.membership._gossiper import GossipConfig, Gossiper
from gossipkv.membership._leader import Decisions, Grant, view_hash
from gossipkv.membership._state import Namespace, build_delta

# --- phi accrual -------------------------------------------------------------------------------


def test_phi_is_in_log10_units_of_the_mean_interval() -> None:
    cfg = DetectorConfig(prior_mean=1.0, prior_weight=1)
    w = ArrivalWindow(cfg, now=0.0)
    for t in range(1, 101):
        w.heartbeat(float(t))
    assert math.isclose(w.mean(), 1.0)
    # 18.42 mean intervals of silence is phi 8 (Cassandra's convention).
    assert math.isclose(w.phi(100.0 + 8 * math.log(10)), 8.0, rel_tol=1e-9)


def test_long_gaps_are_not_learned_and_rebase_forgets_a_stall() -> None:
    cfg = DetectorConfig(prior_mean=1.0, prior_weight=1, max_interval=10.0)
    w = ArrivalWindow(cfg, now=0.0)
    for t in range(1, 11):
        w.heartbeat(float(t))
    w.heartbeat(60.0)  # a partition-sized gap
    assert math.isclose(w.mean(), 1.0)
    w.rebase(100.0)
    assert w.phi(100.0) == 0.0
    w.heartbeat(106.0)  # the gap spanning the stall is not learned either
    assert math.isclose(w.mean(), 1.0)


def test_member_heard_of_once_is_convicted_eventually() -> None:
    cfg = DetectorConfig(prior_mean=0.4)
    w = ArrivalWindow(cfg, now=0.0)
    assert w.phi(0.0) == 0.0
    assert w.phi(10.0) > cfg.down_phi


# --- namespaces and deltas ---------------------------------------------------------------------


def _namespaces(n: int, keys: int) -> dict[str, Namespace]:
    out = {}
    for i in range(n):
        ns = Namespace(f"node{i}", generation=1000 + i, heartbeat=i)
        for k in range(keys):
            ns.set(f"key{k}", "v" * 40)
        out[ns.node_id] = ns
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    keys=st.integers(0, 30),
    budget=st.integers(300, 20_000),
    seed=st.integers(0, 1000),
)
def test_delta_fits_budget_when_encoded(n: int, keys: int, budget: int, seed: int) -> None:
    mine = _namespaces(n, keys)
    rng = random.Random(seed)
    theirs = {
        node_id: DigestEntry(node_id, ns.generation, 0, rng.randint(0, ns.max_version))
        for node_id, ns in mine.items()
        if rng.random() < 0.5
    }
    delta = build_delta(mine, theirs, budget)
    payload = _codec.encode(Kind.RESPONSE, 1, SynAck((), delta))
    assert len(payload) <= budget + 16, f"seed={seed}"


def test_unknown_members_come_first_then_stalest() -> None:
    mine = _namespaces(3, 5)
    theirs = {
        "node1": DigestEntry("node1", 1001, 1, 4),  # 1 version behind
        "node2": DigestEntry("node2", 1002, 2, 0),  # 5 versions behind
    }
    order = [nd.node_id for nd in build_delta(mine, theirs, 60_000)]
    assert order == ["node0", "node2", "node1"]


def test_empty_digest_still_gets_an_in_budget_reply() -> None:
    mine = _namespaces(200, 10)
    delta = build_delta(mine, {}, 2048)
    payload = _codec.encode(Kind.RESPONSE, 1, SynAck((), delta))
    assert 0 < len(delta) < 200 and len(payload) <= 2048 + 16


def test_truncated_delta_is_a_contiguous_prefix_and_applies_idempotently() -> None:
    now = 0.0
    a = Gossiper(
        GossipConfig(max_delta_bytes=1024),
        node_id="a",
        address="a:1",
        generation=5,
        seeds=[],
        now=now,
        bootstrap=True,
    )
    for k in range(40):
        a.set_metadata(f"k{k:02d}", "x" * 30)
    b = Gossiper(
        GossipConfig(max_delta_bytes=1024),
        node_id="b",
        address="b:1",
        generation=7,
        seeds=["a:1"],
        now=now,
    )
    for _ in range(30):
        syn = b.tick(now, random.Random(1))[0][1]
        reply = a.on_syn(syn, now)
        ack = b.on_syn_ack(reply, now)
        b.on_syn_ack(reply, now)  # a duplicate changes nothing
        answer = a.on_ack(ack, now)  # what b asked for (b knew nothing of a)
        if answer is not None:
            b.on_ack(answer, now)
            b.on_ack(answer, now)
    seen = {m.name: m.metadata for m in b.members(now)}
    assert len(seen["a"]) == 40


# --- decisions ---------------------------------------------------------------------------------


def _decisions(term: int, seq: int, **grants: tuple[int, int]) -> Decisions:
    d = Decisions(term=term, seq=seq)
    for node, (gen, up) in grants.items():
        d.grants[node] = Grant(gen, up, term, seq)
    return d


def test_merge_is_idempotent_commutative_and_newer_epoch_wins() -> None:
    old = _decisions(1, 5, x=(10, 3))
    new = _decisions(2, 1, x=(10, 4), y=(11, 5))
    ab, ba = Decisions(), Decisions()
    ab.merge(old), ab.merge(new)
    ba.merge(new), ba.merge(old)
    assert ab.to_plain() == ba.to_plain()
    assert ab.grants["x"].up_number == 4, "a deposed leader's conflicting grant never wins"
    assert not ab.merge(new) and not ab.merge(old)


def test_a_newer_generation_replaces_an_older_grant() -> None:
    d = _decisions(5, 5, x=(10, 3))
    d.merge(_decisions(1, 1, x=(20, 9)))
    assert d.grants["x"] == Grant(20, 9, 1, 1)


def test_a_leave_and_the_table_without_the_leaver_are_accepted_from_one_record() -> None:
    # The leader acknowledges a leave and publishes the table planned without the leaver in one
    # record: a member that still counts the leaver as admitted must take both, in any order.
    mine = _decisions(1, 3, a=(1, 1), b=(2, 2), c=(3, 3))
    mine.table = PartitionTable(1, 3, 3, (("a", "b", "c"),) * 4)
    leader = _decisions(1, 5, a=(1, 1), b=(2, 2), c=(3, 3))
    leader.exited["b"] = 2
    leader.table = PartitionTable(1, 5, 3, (("a", "c"),) * 4)
    assert mine.merge(leader)
    assert mine.table == leader.table, "the table without the leaver was refused"
    assert mine.admitted() == {"a", "c"}


def test_vet_lowers_removals_to_seen_incarnations_and_drops_the_unseen() -> None:
    mine = _decisions(1, 3, a=(100, 1), b=(200, 2))
    other = _decisions(1, 4, a=(100, 1), b=(200, 2))
    other.removed.update({"b": (250, 9), "ghost": (5, 9), "a": (100, 9)})
    reasons = mine.vet(other, max_generation=10_000, seen={"a": 100, "b": 210})
    assert sorted(reasons) == ["removal_unseen", "removal_unseen"]
    assert other.removed == {"b": (210, 9), "a": (100, 9)}


def test_vet_refuses_a_whole_record_near_the_limits_and_drops_future_generations() -> None:
    mine = _decisions(1, 3, a=(100, 1))
    near = _decisions(2**40, 1, a=(100, 1))
    assert mine.vet(near, max_generation=10_000, seen=None) == ["epoch_limit"]
    assert near.to_plain() == Decisions().to_plain()
    future = _decisions(1, 4, a=(100, 1), b=(20_000, 2))
    future.exited["a"] = 50_000
    assert mine.vet(future, max_generation=10_000, seen=None) == [
        "generation_ahead",
        "generation_ahead",
    ]
    assert set(future.grants) == {"a"} and future.exited == {}
    # A peer with no term yet (a new joiner) takes any term below the limit.
    assert (
        Decisions().vet(_decisions(5_000_000, 1, a=(100, 1)), max_generation=999, seen=None) == []
    )


def test_removal_quarantines_older_generations_only() -> None:
    d = Decisions()
    d.removed["x"] = (10, 0)
    assert d.is_removed("x", 10) and d.is_removed("x", 9) and not d.is_removed("x", 11)


def test_decisions_round_trip_and_reject_malformed() -> None:
    d = _decisions(3, 4, x=(10, 3))
    d.removed["y"] = (7, 1234)
    d.exited["z"] = 9
    plain = _codec.loads_value(_codec.dumps_canonical(d.to_plain()))
    again = Decisions.from_plain(plain)
    assert again is not None and again.to_plain() == d.to_plain()
    assert Decisions.from_plain({"term": 1}) is None
    assert (
        Decisions.from_plain(
            {"term": 1, "seq": 1, "grants": {"x": [1]}, "removed": {}, "exited": {}}
        )
        is None
    )


def test_view_hash_ignores_order() -> None:
    a = [("x", 1, "up", 1), ("y", 2, "joining", 0)]
    assert view_hash(a) == view_hash(list(reversed(a)))
    assert view_hash(a) != view_hash(a[:1])


# --- hybrid logical clock ----------------------------------------------------------------------


def test_hlc_is_monotonic_and_merges_remote_stamps() -> None:
    wall = [1000]
    clock = HybridClock(lambda: wall[0])
    first = clock.now()
    second = clock.now()  # same millisecond: the counter moves
    assert second > first and unpack(second) == (1000, 1)
    remote = (1500 << 16) | 7
    merged = clock.update(remote)
    assert merged > remote
    wall[0] = 900  # the wall clock went backwards
    assert clock.now() > merged


def test_hlc_ignores_a_remote_far_in_the_future() -> None:
    clock = HybridClock(lambda: 1000, max_drift_ms=100)
    stamp = clock.update(10_000_000 << 16)
    assert unpack(stamp)[0] == 1000
