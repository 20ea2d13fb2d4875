"""Replicas the partition plan moves on a leave, beyond the leaver's own.

Run: ``python tests/bench/bench_plan_moves.py [Q ...]`` (default 64 256). For every cluster size
from 3 to 20 members, grown one join at a time with N = 3, plans the leave of each member in turn
and counts the moves beyond the replicas that member held (the minimum), and any plan whose loads
differ by more than one. Pure computation: the numbers are the same on every machine. Point
``PYTHONPATH`` at another checkout to measure its plan.
"""

from __future__ import annotations

import sys
from collections import Counter

from gossipkv._partitions import PartitionTable, moves, plan

REPLICAS = 3


def grown(names: list[str], q: int) -> PartitionTable:
    table = None
    for k in range(1, len(names) + 1):
        table = PartitionTable(
            1, k, REPLICAS, plan(names[:k], partitions=q, replicas=REPLICAS, previous=table)
        )
    assert table is not None
    return table


def sweep(q: int) -> None:
    print(f"Q={q}, N={REPLICAS}: members  held by a leaver  extra moves: worst  total")
    worst_all = total_all = unbalanced = 0
    for size in range(3, 21):
        names = [f"n{i}" for i in range(1, size + 1)]
        table = grown(names, q)
        held: list[int] = []
        worst = total = 0
        for leaver in names:
            rest = [m for m in names if m != leaver]
            new = plan(rest, partitions=q, replicas=REPLICAS, previous=table)
            # Fewer members than N: every list just drops the leaver, nothing moves.
            h = sum(leaver in row for row in table.owners) if len(rest) >= REPLICAS else 0
            held.append(h)
            extra = moves(table, new) - h
            worst, total = max(worst, extra), total + extra
            load = Counter(m for row in new for m in row)
            unbalanced += max(load[m] for m in rest) - min(load[m] for m in rest) > 1
        worst_all, total_all = max(worst_all, worst), total_all + total
        print(f"  {size:7d}  {min(held):6d}..{max(held):<6d}       {worst:12d}  {total:5d}")
    print(f"Q={q}: worst {worst_all}, total {total_all} extra moves; {unbalanced} unbalanced plans")


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["64", "256"]:
        sweep(int(arg))
