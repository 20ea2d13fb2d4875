"""The sans-IO replication core on its own: routing, quorum counts, the tally of answers, the
merge, read repair's decision and put routing, with no trio, no network and no storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipkv import _dvv
from gossipkv._dvv import Sibling
from gossipkv._errors import ClusterNotReady, InvalidArgument, QuorumNotReached, Unavailable
from gossipkv._messages import KvPut
from gossipkv._partitions import PartitionTable, plan
from gossipkv._replication import (
    Clock,
    Progress,
    Tally,
    merge,
    plan_put,
    preference_list,
    quorum_size,
    read_plan,
    read_result,
    resolve,
    stale_replicas,
    write_acks,
)

MEMBERS = ["a", "b", "c", "d", "e"]
TABLE = PartitionTable(1, 1, 3, plan(MEMBERS, partitions=16, replicas=3, previous=None))


def owners_of(key: str) -> tuple[str, ...]:
    return TABLE.owners[_dvv.partition_of(key, TABLE.q)]


def written(value: object, actor: str, base: Clock | None = None, ts: int = 0) -> Clock:
    """A clock after a write of ``value`` at ``actor`` over ``base`` (``None``: a blind write)."""
    meta: dict[str, object] = {"ts": ts} if ts else {}
    ctx = None if base is None else _dvv.join(base)
    return _dvv.update(_dvv.new(ctx, Sibling(value, False, meta)), base, actor)


# --- where a key goes ------------------------------------------------------------------------------


def test_every_owner_reachable_is_the_preference_list_in_table_order() -> None:
    targets, n = preference_list(TABLE, "k", set(MEMBERS), sloppy=True)
    assert n == 3
    assert targets == [(o, "") for o in owners_of("k")]


@pytest.mark.parametrize("key", [f"k{i}" for i in range(20)])
def test_an_unreachable_owner_gets_a_stand_in_that_keeps_its_hint(key: str) -> None:
    owners = owners_of(key)
    down = owners[1]
    reachable = set(MEMBERS) - {down}
    targets, n = preference_list(TABLE, key, reachable, sloppy=True)
    assert n == 3 and len(targets) == 3
    assert targets[:2] == [(o, "") for o in owners if o != down]
    stand_in, hint_for = targets[2]
    assert hint_for == down and stand_in not in owners and stand_in in reachable
    # Every peer computes the same stand-in (the ring walk depends on the key only).
    assert preference_list(TABLE, key, reachable, sloppy=True) == (targets, n)


def test_without_sloppy_quorum_an_unreachable_owner_is_simply_missing() -> None:
    owners = owners_of("k")
    targets, n = preference_list(TABLE, "k", set(MEMBERS) - {owners[0]}, sloppy=False)
    assert n == 3 and targets == [(o, "") for o in owners[1:]]


def test_no_table_is_not_ready_and_an_ownerless_partition_is_unavailable() -> None:
    with pytest.raises(ClusterNotReady):
        preference_list(None, "k", set(MEMBERS), sloppy=True)
    empty = PartitionTable(1, 1, 3, tuple(() for _ in range(4)))
    with pytest.raises(Unavailable):
        preference_list(empty, "k", set(MEMBERS), sloppy=True)


@pytest.mark.parametrize(
    ("asked", "want"),
    [(0, 2), (1, 1), (3, 3)],
)
def test_quorum_size_takes_the_default_for_zero(asked: int, want: int) -> None:
    assert quorum_size(asked, 3, "r", 2) == want


@pytest.mark.parametrize("asked", [4, -1, True, 1.0, "2", None])
def test_quorum_size_refuses_what_is_not_zero_or_one_to_n(asked: object) -> None:
    with pytest.raises(InvalidArgument, match="r must be"):
        quorum_size(asked, 3, "r", 2)


def test_a_default_above_n_is_capped_at_n() -> None:
    assert quorum_size(0, 1, "w", 2) == 1  # a one-member cluster runs W=1 (and says so)


def test_a_read_counts_r_among_members_that_are_not_still_filling() -> None:
    targets = [("a", ""), ("b", ""), ("c", "")]
    assert read_plan(targets, 2, set()) == (["a", "b", "c"], None)
    assert read_plan(targets, 2, {"c"}) == (["a", "b", "c"], {"a", "b"})
    # Too few settled replicas: every answer counts rather than failing the read.
    assert read_plan(targets, 2, {"b", "c"}) == (["a", "b", "c"], None)
    with pytest.raises(QuorumNotReached):
        read_plan(targets[:1], 2, set())


# --- put routing -----------------------------------------------------------------------------------


def test_a_put_at_a_replica_runs_there_and_one_at_a_non_replica_is_forwarded() -> None:
    owners = owners_of("k")
    targets = [(o, "") for o in owners]
    outsider = next(m for m in MEMBERS if m not in owners)
    request = KvPut("k", "v", w=0, client_id="cl", seq=7)
    at_replica = plan_put(
        request, node_id=owners[1], ctx=None, size=3, targets=targets, n=3,
        default_w=2, stamp=None, started=0.0,
    )  # fmt: skip
    assert at_replica.forward_to == "" and at_replica.need == 2 and at_replica.rid == "cl:7"
    assert [m for m, _ in at_replica.others] == [owners[0], owners[2]]
    assert at_replica.sibling.meta == {"rid": "cl:7"}
    elsewhere = plan_put(
        request, node_id=outsider, ctx=None, size=3, targets=targets, n=3,
        default_w=2, stamp=lambda: 99, started=0.0,
    )  # fmt: skip
    assert elsewhere.forward_to == owners[0]
    assert "ts" not in elsewhere.sibling.meta  # stamped where it is stored, not here
    # Forwarded once, it runs where it lands even at a non-replica (no forwarding loops).
    forwarded = KvPut("k", "v", forwarded=True)
    there = plan_put(
        forwarded, node_id=outsider, ctx=None, size=3, targets=targets, n=3,
        default_w=2, stamp=None, started=0.0,
    )  # fmt: skip
    assert there.forward_to == ""


def test_a_stand_in_keeps_a_hint_and_a_delete_is_a_stamped_tombstone() -> None:
    targets = [("a", ""), ("b", ""), ("x", "c")]
    p = plan_put(
        KvPut("k", None, delete=True), node_id="x", ctx={"a": 1}, size=0, targets=targets,
        n=3, default_w=2, stamp=lambda: 1234, started=0.0,
    )  # fmt: skip
    assert p.hint_for == "c" and p.sibling.tombstone and p.sibling.meta == {"ts": 1234}
    assert p.ctx == {"a": 1}


def test_put_routing_refuses_a_bad_w_and_an_empty_preference_list() -> None:
    with pytest.raises(InvalidArgument):
        plan_put(
            KvPut("k", 1, w=4), node_id="a", ctx=None, size=1, targets=[("a", "")], n=3,
            default_w=2, stamp=None, started=0.0,
        )  # fmt: skip
    with pytest.raises(Unavailable, match="no replica"):
        plan_put(
            KvPut("k", 1), node_id="a", ctx=None, size=1, targets=[], n=3,
            default_w=2, stamp=None, started=0.0,
        )  # fmt: skip


# --- the tally -------------------------------------------------------------------------------------

events = st.lists(
    st.tuples(st.sampled_from(["answer", "fail"]), st.sampled_from(["a", "b", "c", "z"])),
    max_size=12,
)


@given(need=st.integers(0, 3), steps=events, counted=st.sampled_from([None, {"a", "b"}]))
def test_the_tally_completes_once_and_exactly_when_it_should(
    need: int, steps: list[tuple[str, str]], counted: set[str] | None
) -> None:
    tally = Tally(["a", "b", "c"], need, counted)
    enough = done = 0
    first = tally.check()  # what the runtime calls after sending every request
    fired = [first]
    answered: set[str] = set()
    settled: set[str] = set()
    for kind, member in steps:
        if kind == "answer":
            progress = tally.answered(member, None)
            if member in {"a", "b", "c"} and member not in settled:
                answered.add(member)
        else:
            progress = tally.failed(member)
        if member in {"a", "b", "c"}:
            settled.add(member)
        fired.append(progress)
    for progress in fired:
        enough += bool(progress & Progress.ENOUGH)
        done += bool(progress & Progress.DONE)
    counting = answered if counted is None else answered & counted
    # ENOUGH fires once, as soon as ``need`` counted answers are in or nobody is left to ask.
    should_be_enough = len(counting) >= need or settled == {"a", "b", "c"}
    assert (enough == 1) == should_be_enough == tally.enough, (fired, tally.replies)
    assert enough <= 1 and done <= 1
    # DONE fires once, when every asked member answered or failed; strangers change nothing.
    assert (done == 1) == (settled == {"a", "b", "c"}) == tally.done
    assert set(tally.replies) == answered and "z" not in tally.replies


def test_nobody_to_ask_completes_at_the_first_check() -> None:
    tally = Tally([], 2)
    assert tally.check() == Progress.ENOUGH | Progress.DONE
    assert tally.check() == Progress.NONE
    with pytest.raises(QuorumNotReached):
        read_result(tally)


def test_a_second_answer_from_the_same_member_is_ignored() -> None:
    tally = Tally(["a", "b"], 2)
    v1 = written("one", "a:1")
    assert tally.answered("a", v1) == Progress.NONE
    assert tally.answered("a", None) == Progress.NONE
    assert tally.replies == {"a": v1}


# --- what the answers add up to --------------------------------------------------------------------


def test_reads_merge_concurrent_versions_into_siblings_and_repair_the_stale() -> None:
    base = written("v0", "a:1")
    left = written("left", "a:1", base)
    right = written("right", "b:1", base)
    replies: dict[str, Clock | None] = {"a": left, "b": right, "c": base, "d": None}
    final, stale = stale_replicas(replies)
    assert final is not None
    assert sorted(s.data for s in _dvv.values(final)) == ["left", "right"]
    assert sorted(stale) == ["a", "b", "c", "d"]  # everyone lacked something
    # Agreeing replicas need no repair; a not-found (None) one does.
    same, stale = stale_replicas({"a": left, "b": left, "c": None})
    assert same is left and stale == ["c"]
    assert stale_replicas({"a": None, "b": None}) == (None, [])


def test_read_result_needs_r_counted_answers() -> None:
    tally = Tally(["a", "b", "c"], 2, counted={"a", "b"})
    tally.answered("a", written("x", "a:1"))
    tally.answered("c", written("x", "a:1"))
    with pytest.raises(QuorumNotReached) as info:
        read_result(tally)
    assert "1" in str(info.value) and "2" in str(info.value)
    tally.answered("b", None)
    got = read_result(tally)
    assert got is not None and [s.data for s in _dvv.values(got)] == ["x"]


def test_last_write_wins_keeps_only_the_newest_stamp() -> None:
    base = written("v0", "a:1")
    old = written("old", "a:1", base, ts=10)
    new = written("new", "b:1", base, ts=20)
    merged = merge({"a": old, "b": new}, last_write_wins=True)
    assert merged is not None and [s.data for s in _dvv.values(merged)] == ["new"]
    both = merge({"a": old, "b": new})
    assert both is not None and _dvv.size(both) == 2
    assert resolve(both, last_write_wins=False) is both


def test_write_acks_count_the_coordinator_copy() -> None:
    tally = Tally(["b", "c"], 1)
    tally.answered("b", None)
    assert write_acks(tally, 2) == 2
    lonely = Tally(["b", "c"], 1)
    lonely.failed("b")
    lonely.failed("c")
    with pytest.raises(QuorumNotReached):
        write_acks(lonely, 2)
