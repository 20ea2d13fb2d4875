"""What members publish for the data path: replica progress, read from and written to gossip.

A member publishes the partitions it is still pulling (a transfer in flight), the write time of
the newest tombstone it reaped, and, as a replacement, that it has filled what it took over.
:class:`ReplicaProgress` writes this peer's and reads everyone's, so the data path can tell which
partitions have fewer than N full copies and whether a member back from a long absence must wipe
its replica (see ``gossipkv._reaper``). Membership itself decides nothing from these.
"""

from __future__ import annotations

from ._table import MemberTable, gone


class ReplicaProgress:
    """This peer's replica progress in its namespace, and every member's as gossiped.

    Args:
      table: the members.
    """

    def __init__(self, table: MemberTable) -> None:
        self._t = table
        self._reaped: tuple[tuple[int, int], int] | None = None

    def set_pulling(self, partitions: list[int]) -> None:
        """Publish the partitions this member is still pulling (a transfer in flight), so every
        peer can tell which partitions have fewer than N full copies."""
        if self._t.me.get("pulling") != partitions:
            self._t.write("pulling", partitions)

    def set_reaped_upto(self, wall_ms: int) -> None:
        """Publish the write time of the newest tombstone this member reaped (wall-clock ms):
        a member back from a longer absence wipes its replica if anyone reaped a tombstone
        written after it was last alive (see ``gossipkv._reaper``)."""
        if wall_ms > 0 and self._t.me.get("reaped_upto") != wall_ms:
            self._t.write("reaped_upto", wall_ms)

    def mark_filled(self) -> None:
        """This replacement has filled every partition it took over: the leader may admit it."""
        if self._t.me.get("filled") is not True:
            self._t.write("filled", True)

    def reaped_upto(self) -> int:
        """The newest tombstone write time any known member published as reaped (0: none)."""
        t = self._t
        # The runtime asks after every evaluation: answered from a cache until a change.
        stamp = (t.changes, t.me.max_version)
        if self._reaped is not None and self._reaped[0] == stamp:
            return self._reaped[1]
        out = 0
        for ns in t.namespaces.values():
            value = ns.get("reaped_upto")
            if type(value) is int and value > out:
                out = value
        self._reaped = (stamp, out)
        return out

    def pulling(self, partition: int) -> set[str]:
        """The members still pulling ``partition`` (a transfer into them is in flight)."""
        out = set()
        for node_id, ns in self._t.namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list) and partition in value:
                out.add(node_id)
        return out

    def under_replicated(self, reachable: set[str]) -> int:
        """Partitions with an owner that is not in ``reachable`` or still pulling them."""
        table = self._t.decisions.table
        if table is None:
            return 0
        pulling: dict[str, set[int]] = {}
        for node_id, ns in self._t.namespaces.items():
            value = ns.get("pulling")
            if isinstance(value, list):
                pulling[node_id] = {p for p in value if isinstance(p, int)}
        return sum(
            1
            for p, row in enumerate(table.owners)
            if len(row) < table.n or any(o not in reachable or p in pulling.get(o, ()) for o in row)
        )

    def is_gone(self, node_id: str) -> bool:
        """Whether ``node_id`` will not serve again: removed (and not admitted again), or it
        left (its decommission finished)."""
        t = self._t
        if node_id in t.decisions.removed and t.decisions.admission(node_id) is None:
            return True
        ns = t.namespaces.get(node_id)
        return ns is not None and node_id != t.node_id and gone(t.peers.get(node_id), ns)
