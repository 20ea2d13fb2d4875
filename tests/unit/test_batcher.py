"""The replica batcher on its own: how pending ops are grouped, and how a reply is split."""

from __future__ import annotations

import pytest

from gossipkv._batcher import BATCH_BYTES, BATCH_OP_BYTES, ReplicaBatcher, size_bound
from gossipkv._errors import DecodeError
from gossipkv._messages import (
    MAX_BATCH_OPS,
    BatchError,
    ErrorReply,
    Kind,
    ReplicaBatchReply,
    ReplicaGet,
    ReplicaPut,
    ReplicaState,
)


def _add_gets(batcher: ReplicaBatcher, count: int, first: int = 1) -> list[int]:
    ids = list(range(first, first + count))
    for request_id in ids:
        get = ReplicaGet(f"k{request_id}")
        batcher.add(request_id, get, size_bound(get))
    return ids


def test_pending_ops_are_grouped_in_order_up_to_the_op_count() -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 2 * MAX_BATCH_OPS + 3)
    taken, groups = batcher.take(set(ids))
    assert taken == len(ids) and len(batcher) == 0
    assert [len(g) for g in groups] == [MAX_BATCH_OPS, MAX_BATCH_OPS, 3]
    assert [rid for g in groups for rid, _ in g] == ids


def test_a_group_stays_under_the_byte_budget() -> None:
    batcher = ReplicaBatcher()
    clock = b"x" * (BATCH_OP_BYTES - 200)
    puts = [ReplicaPut(f"k{i}", clock) for i in range(20)]
    for i, put in enumerate(puts):
        assert size_bound(put) <= BATCH_OP_BYTES
        batcher.add(i, put, size_bound(put))
    _, groups = batcher.take(range(20))
    assert sum(len(g) for g in groups) == 20
    for group in groups:
        assert sum(size_bound(m) for _, m in group) <= BATCH_BYTES


def test_cancelled_ops_are_left_out_but_counted_as_taken() -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 5)
    taken, groups = batcher.take({ids[1], ids[3]})
    assert taken == 5
    assert [[rid for rid, _ in g] for g in groups] == [[ids[1], ids[3]]]


def test_a_reply_is_split_per_op_and_full_ops_are_sent_again() -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 3)
    _, (group,) = batcher.take(set(ids))
    batcher.sent(99, group)
    assert batcher.in_flight == 3
    reply = ReplicaBatchReply(
        (b"c1", None, None),
        (BatchError(1, "batch_full", "no room"), BatchError(2, "not_owner", "moved")),
    )
    answers = batcher.answers(group, Kind.RESPONSE, reply)
    assert answers.done == [
        (ids[0], Kind.RESPONSE, ReplicaState(b"c1")),
        (ids[2], Kind.ERROR, ErrorReply("not_owner", "moved")),
    ]
    assert answers.again == [group[1]]
    assert batcher.in_flight == 0


def test_an_error_reply_answers_every_op() -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 2)
    _, (group,) = batcher.take(set(ids))
    error = ErrorReply("overloaded", "busy")
    answers = batcher.answers(group, Kind.ERROR, error)
    assert answers.done == [(rid, Kind.ERROR, error) for rid in ids] and not answers.again


@pytest.mark.parametrize(
    "reply", [ReplicaBatchReply((b"a",)), ReplicaState(b"a")], ids=["short", "not_a_batch"]
)
def test_a_reply_that_does_not_answer_the_batch_is_a_bad_batch(
    reply: ReplicaBatchReply | ReplicaState,
) -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 2)
    _, (group,) = batcher.take(set(ids))
    with pytest.raises(DecodeError) as caught:
        batcher.answers(group, Kind.RESPONSE, reply)
    assert caught.value.reason == "bad_batch"


def test_forget_names_the_batch_an_op_travels_in() -> None:
    batcher = ReplicaBatcher()
    ids = _add_gets(batcher, 2)
    _, (group,) = batcher.take(set(ids))
    batcher.sent(7, group)
    assert batcher.forget(ids[0]) == 7
    assert batcher.forget(ids[0]) is None
    batcher.clear()
    assert batcher.in_flight == 0
