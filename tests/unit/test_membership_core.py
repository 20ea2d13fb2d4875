"""The sans-IO membership core, without any network: detector, summary, namespaces, deltas,
decisions."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv import _codec
from gossipkv._hlc import HybridClock, unpack
from gossipkv._messages import DigestEntry, Kind, SynAck
from gossipkv._partitions import PartitionTable
from gossipkv.membership._detector import DOWN, VERDICTS, FailureDetector
from gossipkv.membership._gossiper import GossipConfig, Gossiper
from gossipkv.membership._leader import Decisions, Grant, view_hash
from gossipkv.membership._own import OwnEntry
from gossipkv.membership._state import (
    Namespace,
    ViewSummary,
    bucket_hashes,
    bucket_of,
    build_delta,
)
from gossipkv.membership._table import MemberTable, Peer

# --- failure detection (SWIM) ------------------------------------------------------------------


def _table(*others: str) -> tuple[MemberTable, OwnEntry, FailureDetector]:
    """A peer ``me`` that knows ``others`` (each up, at version 3), with its detector."""
    table = MemberTable(GossipConfig(), "me", Decisions())
    own = OwnEntry(table, "me:1", generation=100)
    for i, name in enumerate(others):
        ns = Namespace(name, generation=10 + i)
        for key, value in (("addr", f"{name}:1"), ("status", "up"), ("up", i + 2)):
            ns.set(key, value)
        table.add(ns)
        table.peers[name] = Peer()
    return table, own, FailureDetector(table, now=0.0)


def _reports(table: MemberTable) -> dict[str, list[int]]:
    value = table.me.get(VERDICTS)
    assert value is None or isinstance(value, dict)
    return value or {}


def _reprobe(
    detector: FailureDetector,
    node_id: str,
    times: int,
    at: float,
    step: float = 1.0,
    *,
    refused: bool = False,
) -> None:
    rng = random.Random(1)
    for i in range(times):
        assert node_id in detector.due(at + i * step, rng)[0], "a suspect is re-probed"
        detector.probe_failed(node_id, started=at + i * step, now=at + i * step, refused=refused)


def test_a_silent_member_is_suspect_here_and_down_after_the_long_timeout() -> None:
    table, _, detector = _table("x")
    detector.probe_failed("x", started=1.0, now=1.5, refused=False)
    assert table.peers["x"].liveness == "suspect"
    assert _reports(table) == {}, "a suspicion stays local"
    shortest, longest = table.config.suspicion_timeouts(2)
    _reprobe(detector, "x", 2, at=2.0)
    detector.evaluate(100.0)
    assert table.peers["x"].liveness == "suspect", "not before three re-probes failed too"
    _reprobe(detector, "x", 1, at=4.0)
    assert table.peers["x"].liveness == "suspect", "silent, not refusing: the long timeout"
    assert detector.next_deadline() == 1.5 + longest
    detector.evaluate(1.5 + longest)
    assert table.peers["x"].liveness == "down"
    assert _reports(table) == {"x": [10, 3, DOWN]}
    assert [e.kind for e in table.events] == ["suspect", "down"]
    assert longest > shortest


def test_a_member_that_refuses_connections_is_down_after_the_short_timeout() -> None:
    table, _, detector = _table("x")
    detector.probe_failed("x", started=1.0, now=1.0, refused=True)
    _reprobe(detector, "x", 3, at=1.4, step=0.4, refused=True)  # each refused at once
    shortest, _ = table.config.suspicion_timeouts(2)
    assert table.peers["x"].liveness == "suspect"
    assert detector.next_deadline() == 1.0 + shortest
    detector.evaluate(1.0 + shortest)
    assert table.peers["x"].liveness == "down" and _reports(table) == {"x": [10, 3, DOWN]}


def test_one_silent_probe_among_refused_ones_means_the_long_timeout() -> None:
    table, _, detector = _table("x")
    detector.probe_failed("x", started=1.0, now=1.0, refused=True)
    _reprobe(detector, "x", 2, at=1.4, step=0.4, refused=True)
    _reprobe(detector, "x", 1, at=2.2, refused=False)
    shortest, longest = table.config.suspicion_timeouts(2)
    detector.evaluate(1.0 + shortest)
    assert table.peers["x"].liveness == "suspect"
    assert detector.next_deadline() == 1.0 + longest


def test_an_answered_probe_ends_this_peers_suspicion() -> None:
    table, _, detector = _table("x", "y")
    detector.probe_failed("x", started=1.0, now=1.5, refused=False)
    detector.probe_ok("x", now=2.0)
    assert table.peers["x"].liveness == "alive" and _reports(table) == {}
    assert detector.next_deadline() == math.inf


def test_indirect_probe_helpers_are_chosen_first_among_connected_members() -> None:
    # After a crash every survivor asks helpers at once; each helper it is not yet connected
    # with costs a new connection (at 1,000 simulated peers, gigabytes of them).
    table, _, detector = _table("x", *(f"m{i}" for i in range(20)))
    want = table.config.indirect_probes
    near = {"m3:1", "m7:1", "m11:1", "m12:1", "m19:1"}
    for seed in range(20):
        helpers = detector.helpers("x", random.Random(seed), near.__contains__)
        assert len(helpers) == want and set(helpers) <= near, seed
    few = {"m3:1"}
    helpers = detector.helpers("x", random.Random(1), few.__contains__)
    assert len(helpers) == want and helpers[0] == "m3:1" and len(set(helpers)) == want
    assert "x:1" not in helpers, "never the member being probed"
    assert "x:1" not in detector.helpers("x", random.Random(1), {"x:1"}.__contains__)


def test_a_late_outcome_is_inconclusive_and_makes_this_peer_slower() -> None:
    table, _, detector = _table("x")
    detector.probe_failed("x", started=1.0, now=1.5, refused=False)
    detector.probe_inconclusive("x")
    assert detector.stretch == 2 and detector.probe_timeout() == 2 * table.config.probe_timeout
    assert "x" in detector.due(2.0, random.Random(1))[0], "re-probed at once"
    detector.probe_ok("x", now=3.0)
    assert detector.stretch == 1 and table.peers["x"].liveness == "alive"


def test_a_newer_version_refutes_a_verdict_and_the_report_is_retracted() -> None:
    table, _, detector = _table("x")
    detector.probe_failed("x", started=1.0, now=1.5, refused=True)
    _reprobe(detector, "x", 3, at=2.0, refused=True)
    detector.evaluate(100.0)
    assert table.peers["x"].liveness == "down"
    table.namespaces["x"].set("alive", 1)  # what the member writes when it learns of it
    detector.advanced("x", now=101.0)
    assert table.peers["x"].liveness == "alive" and _reports(table) == {}


def test_verdicts_are_adopted_unless_older_than_what_is_known() -> None:
    table, _, detector = _table("x", "y", "z")
    claim = detector.reported("y", {"x": [10, 3, DOWN], "me": [100, 7, DOWN]}, now=1.0)
    assert table.peers["x"].liveness == "down" and claim == 7
    table.namespaces["z"].set("alive", 1)  # z is at version 4 here
    detector.reported("y", {"z": [11, 3, DOWN]}, now=2.0)
    assert table.peers["z"].liveness == "alive", "a report older than what is known is void"
    assert detector.reported("y", {"x": ["bad"]}, now=3.0) is None
    assert detector.reported("y", {"x": [10, 3, 1]}, now=3.0) is None
    assert table.counters.bad_values == 2


def test_a_stall_voids_the_suspicions_and_guards_against_verdicts() -> None:
    table, _, detector = _table("x", "y")
    detector.probe_failed("x", started=1.0, now=1.5, refused=False)
    detector.pause_guard(now=8.0)
    assert table.peers["x"].liveness == "alive"
    detector.probe_failed("y", started=7.0, now=8.5, refused=True)  # begun before the stall
    detector.probe_failed("y", started=8.2, now=8.5, refused=True)  # within the guard
    assert table.peers["y"].liveness == "alive"


def test_the_round_robin_probes_every_member_once_a_cycle() -> None:
    table, _, detector = _table(*[f"m{i}" for i in range(7)])
    rng = random.Random(3)
    interval = table.config.probe_interval
    seen = [t for k in range(14) for t in detector.due(k * interval, rng)[0]]
    assert sorted(seen[:7]) == sorted(seen[7:]) == [f"m{i}" for i in range(7)]


def test_a_report_about_this_peer_is_refuted_with_a_newer_version() -> None:
    table, own, _ = _table()
    version = table.me.max_version
    assert own.refute_report(version) and table.me.max_version == version + 1
    assert not own.refute_report(version), "our newer version answers an older report"
    assert own.refute_report(version + 50) and table.me.max_version > version + 50
    assert table.counters.refused == {"forged_self": 1}


# --- the view's summary ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    changes=st.lists(
        st.tuples(st.integers(0, 30), st.integers(0, 3), st.integers(0, 50)), max_size=80
    ),
    count=st.sampled_from([1, 2, 4, 16, 64]),
)
def test_the_summary_kept_current_equals_one_computed_afresh(
    changes: list[tuple[int, int, int]], count: int
) -> None:
    summary = ViewSummary()
    spaces: dict[str, Namespace] = {}
    summary.buckets(count)
    for member, generation, version in changes:
        name = f"m{member}"
        if generation == 0:
            spaces.pop(name, None)
            summary.drop(name)
            continue
        ns = Namespace(name, generation, max_version=version)
        spaces[name] = ns
        summary.update(name, generation, version)
        assert summary.buckets(count) == bucket_hashes(spaces.values(), count)
    for other in (1, 8, count):
        assert summary.buckets(other) == bucket_hashes(spaces.values(), other)
        for b in range(other):
            assert list(summary.members(other, b)) == [
                n for n in spaces if bucket_of(n, other) == b
            ], "each bucket's members, in the order learned"


@pytest.mark.parametrize("n", [1, 10, 100, 1000, 100_000])
def test_a_syn_summary_stays_within_the_digest_budget(n: int) -> None:
    config = GossipConfig()
    count = config.syn_buckets(n)
    assert 1 <= count <= config.digest_buckets and count * 9 <= config.max_digest_bytes
    assert count & (count - 1) == 0


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
        syn = b.syn()
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
