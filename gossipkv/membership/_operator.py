"""The leader acting on an operator's word: removing a dead member, or handing its partitions
to a replacement (``gossipkv remove``, ``gossipkv peer --replace``).

Both stand in for the majority the leader's own removals need (with 2 of 5 members left, the 3
dead ones can still be removed), so both are refused while the member is in reach: it must be
stopped or found down first.
"""

from __future__ import annotations

from .._partitions import PartitionTable
from ._duties import LeaderDuties
from ._table import MemberTable, gone, status_of


class OperatorActions:
    """Removals and replacements an operator asks the leader for.

    Args:
      table: the members.
      duties: the leader's side of this peer (who leads, the removal itself).
    """

    def __init__(self, table: MemberTable, duties: LeaderDuties) -> None:
        self._t = table
        self._duties = duties

    def remove(self, node_id: str, now: float, wall_ms: int) -> tuple[int, bool]:
        """Remove ``node_id`` on an operator's word (``gossipkv remove``): its incarnation is
        removed and its partitions go to the members that remain, at once.

        The operator's word stands in for the majority the leader otherwise needs: with 2 of 5
        members left, the 3 dead ones can still be removed. It is refused while this peer (the
        leader) can reach the member, which must be stopped or declared dead first.

        Returns:
          The removed generation, and whether the survivors were short of a majority.

        Raises:
          ValueError: this peer is not the leader, the member is this peer or unknown, or it
            is reachable and not leaving.
        """
        d = self._t.decisions
        if node_id in d.removed and d.admission(node_id) is None:
            if node_id not in self._t.namespaces and self._duties.leader() == self._t.node_id:
                return d.removed[node_id][0], False  # removed already
        generation = self._removable(node_id)
        minority = not self._duties.has_majority()
        self._duties.remove_now(node_id, generation, now, wall_ms)
        return generation, minority

    def _removable(self, node_id: str) -> int:
        """The generation to remove of a member an operator declares dead.

        Raises:
          ValueError: as :meth:`remove`.
        """
        if node_id == self._t.node_id:
            raise ValueError("a member cannot remove itself: use gossipkv leave")
        if self._duties.leader() != self._t.node_id:
            raise ValueError(
                f"only the leader can remove members (the leader is {self._duties.leader()})"
            )
        t = self._t
        ns = t.namespaces.get(node_id)
        grant = t.decisions.admission(node_id)
        if ns is None and grant is None:
            raise ValueError(f"no member named {node_id!r}")
        peer = t.peers.get(node_id)
        if ns is not None and peer is not None and peer.liveness != "down" and not gone(peer, ns):
            raise ValueError(
                f"{node_id} is reachable and {status_of(ns)}: stop it first (or use leave)"
            )
        return max(ns.generation if ns is not None else 0, grant.generation if grant else 0)

    def replace(
        self, replaced: str, replacement: str, generation: int, now: float, wall_ms: int
    ) -> bool:
        """Hand every partition of dead member ``replaced`` to the new member ``replacement``
        (``gossipkv peer --replace``), moving no other partition: ``replaced`` is removed and
        ``replacement`` takes its place in every preference list. ``replacement`` is admitted
        (up, serving reads) only once it has filled those partitions from the other owners;
        until then reads go to them and its writes are hinted. Like an operator removal this
        needs no majority. Asking again (a replacement that restarted) changes nothing.

        Returns:
          Whether it was done now (False: it had been done already).

        Raises:
          ValueError: this peer is not the leader; ``replaced`` is unknown, this peer, or
            reachable and up; ``replacement`` is already a member.
        """
        d = self._t.decisions
        if self._duties.leader() != self._t.node_id:
            raise ValueError(
                f"only the leader can replace members (the leader is {self._duties.leader()})"
            )
        if d.replacing.get(replacement, ("", -1))[0] == replaced and replaced in d.removed:
            d.replacing[replacement] = (replaced, max(generation, d.replacing[replacement][1]))
            self._t.decisions_dirty = True
            return False
        known = self._t.namespaces.get(replacement)
        if d.admission(replacement) is not None or (
            known is not None and status_of(known) != "joining"
        ):
            raise ValueError(f"{replacement} is already a member; it cannot replace {replaced}")
        removed_generation = self._removable(replaced)
        d.replacing[replacement] = (replaced, generation)
        table = d.table
        if table is not None:
            # The replacement takes the replaced member's place in every preference list.
            owners = tuple(
                tuple(replacement if o == replaced else o for o in row) for row in table.owners
            )
            term, seq = d.next_epoch()
            d.table = PartitionTable(term, seq, table.n, owners)
        self._duties.remove_now(replaced, removed_generation, now, wall_ms)
        return True
