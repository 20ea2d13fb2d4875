"""The partition plan: balanced, distinct owners, and few moves when membership changes."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipkv._partitions import PartitionTable, moves, plan


def grown(names: list[str], q: int) -> PartitionTable:
    """The table a cluster reaches as ``names`` join one by one."""
    table = None
    for k in range(1, len(names) + 1):
        table = PartitionTable(1, k, 3, plan(names[:k], partitions=q, replicas=3, previous=table))
    assert table is not None
    return table


def check_balanced(owners: tuple[tuple[str, ...], ...], members: list[str]) -> None:
    n = min(3, len(members))
    assert all(len(row) == n == len(set(row)) and set(row) <= set(members) for row in owners)
    load = Counter(m for row in owners for m in row)
    assert max(load[m] for m in members) - min(load[m] for m in members) <= 1, load


@pytest.mark.parametrize("size", range(4, 11))
@pytest.mark.parametrize("q", [64, 256])
def test_a_leave_moves_little_more_than_the_leavers_replicas(size: int, q: int) -> None:
    names = [f"n{i}" for i in range(1, size + 1)]
    table = grown(names, q)
    for leaver in names:
        rest = [m for m in names if m != leaver]
        new = plan(rest, partitions=q, replicas=3, previous=table)
        check_balanced(new, rest)
        needed = sum(1 for row in table.owners if leaver in row)
        # Balance can need a few more (measured worst over 3..12 members: 8; it was 30 when
        # evening out moved kept replicas before the ones the plan had just placed).
        assert moves(table, new) - needed <= 8, (size, q, leaver)


@pytest.mark.parametrize("size", range(3, 11))
def test_a_join_moves_only_what_the_joiner_takes(size: int) -> None:
    names = [f"n{i}" for i in range(1, size + 1)]
    table = grown(names, 128)
    new = plan([*names, "x"], partitions=128, replicas=3, previous=table)
    check_balanced(new, [*names, "x"])
    assert moves(table, new) == sum(1 for row in new if "x" in row)


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(1, 9),
    q=st.sampled_from([1, 7, 64]),
    gone=st.sets(st.integers(0, 8), max_size=3),
)
def test_any_change_gives_a_balanced_plan(size: int, q: int, gone: set[int]) -> None:
    names = [f"n{i}" for i in range(size)]
    table = grown(names, q)
    rest = [m for i, m in enumerate(names) if i not in gone] or names[:1]
    new = plan(rest, partitions=q, replicas=3, previous=table)
    if q * min(3, len(rest)) >= len(rest):
        check_balanced(new, rest)
