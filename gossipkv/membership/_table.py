"""Everything one peer knows of the members: their gossiped namespaces and its own opinions.

:class:`MemberTable` is the state the membership rooms share: the namespaces (what each member
wrote, learned by gossip), this peer's local opinion of each remote member (:class:`Peer`, never
gossiped), the view's summary, events, counters and refusals. It decides nothing; the rooms
around it (exchange, intake, detector, own entry, leader duties) change it through these methods,
so that its caches are invalidated in one place. The functions at the bottom read a namespace's
well-known keys, defensively: every value came from the network.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .._types import Address
from ._config import GossipConfig
from ._leader import MAX_COUNTER, Age, Decisions
from ._records import GossipCounters, MembershipEvent, MemberView
from ._state import Namespace, ViewSummary

Liveness = Literal["alive", "suspect", "down"]
SelfStatus = Literal["joining", "up", "leaving", "left"]
_SELF_STATUSES = ("joining", "up", "leaving", "left")
META_PREFIX = "meta:"
#: The namespace keys the derived lists (targets, the visible members, the view a member
#: publishes, who leads) are read from: a change of any other key (a member's ``view`` hash,
#: its ``pulling`` list, metadata) moves :attr:`MemberTable.changes` but not
#: :attr:`MemberTable.structure`.
STRUCTURAL_KEYS = frozenset({"addr", "status", "up", "admitted", "decisions", "replaces", "filled"})


@dataclass(slots=True)
class Peer:
    """What this peer alone thinks of a remote member (never gossiped)."""

    liveness: Liveness = "alive"
    down_since: float | None = None
    #: The member's newest version when it was found down: any newer one proves it alive.
    down_version: int = 0
    left_since: float | None = None
    shutdown_noticed: bool = False


class MemberTable:
    """The namespaces, local opinions, summary, events and counters of one peer.

    Args:
      config: tuning.
      node_id: this peer's name.
      decisions: the leader decisions this peer accepted.
    """

    def __init__(self, config: GossipConfig, node_id: str, decisions: Decisions) -> None:
        self.config = config
        self.node_id = node_id
        self.decisions = decisions
        #: Set when the decisions changed (the runtime persists them, then clears it).
        self.decisions_dirty = False
        self.namespaces: dict[str, Namespace] = {}
        self.peers: dict[str, Peer] = {}
        #: Bucket hashes of the view, kept current as namespaces change.
        self.summary = ViewSummary()
        self.counters = GossipCounters()
        self.events: deque[MembershipEvent] = deque(maxlen=1024)
        #: Refusals of forged-looking gossip since the runtime last looked: ``(reason, detail)``.
        self.refusal_notes: deque[tuple[str, str]] = deque(maxlen=64)
        #: Bumped by every event and every entry learned: work that only such a change can make
        #: necessary is skipped, and caches below are rebuilt, when it has not moved.
        self.changes = 0
        #: Bumped by every event (liveness, status), every member added or dropped and every
        #: change of a :data:`STRUCTURAL_KEYS` entry: what the derived lists below and a
        #: member's evaluation (short of the leader's convergence check) depend on. In a large
        #: cluster most changes are members' ``view`` hashes, which none of that reads.
        self.structure = 0
        #: Bumped whenever this peer learns or writes something others may not know yet.
        self.news = 0
        #: Called on news (the runtime wakes its loops with it).
        self.on_news: Callable[[], None] | None = None
        #: This peer's wall clock at the last evaluation (generations are wall-clock ms).
        self.wall_ms = 0
        self._others: list[str] | None = None
        self._targets: tuple[int, list[str], list[str]] | None = None
        self._visible: tuple[tuple[int, int], list[tuple[str, Namespace]]] | None = None

    # --- namespaces ------------------------------------------------------------------------------

    @property
    def me(self) -> Namespace:
        """This peer's own namespace (the current incarnation's)."""
        return self.namespaces[self.node_id]

    def add(self, ns: Namespace) -> None:
        """Hold ``ns`` as what is known of its member (replacing any older incarnation)."""
        self.namespaces[ns.node_id] = ns
        ns.watcher = self.summary
        self.summary.update(ns.node_id, ns.generation, ns.max_version)
        self._others = None
        self.structure += 1

    def drop(self, node_id: str) -> None:
        """Forget a member entirely (its incarnation was removed)."""
        del self.namespaces[node_id]
        self.peers.pop(node_id, None)
        self.summary.drop(node_id)
        self._others = None
        self.changes += 1
        self.structure += 1

    def learned(self) -> None:
        """Something new was learned or written: caches go, and eager gossip starts."""
        self.changes += 1
        self.news += 1
        if self.on_news is not None:
            self.on_news()

    def write(self, key: str, value: object) -> bool:
        """Write one key of this peer's own namespace; returns False if it was unchanged."""
        if not self.me.set(key, value):
            return False
        if key in STRUCTURAL_KEYS:
            self.structure += 1
        self.learned()
        return True

    # --- events and refusals --------------------------------------------------------------------

    def event(self, now: float, kind: str, node_id: str, generation: int, detail: str = "") -> None:
        self.changes += 1
        self.structure += 1
        self.events.append(MembershipEvent(now, kind, node_id, generation, detail))

    def refuse(self, reason: str, detail: str) -> None:
        self.counters.refused[reason] = self.counters.refused.get(reason, 0) + 1
        self.refusal_notes.append((reason, detail))

    def max_generation(self) -> int:
        """The newest generation gossip may claim (this peer's clock plus the allowed skew)."""
        return self.wall_ms + int(self.config.max_generation_ahead * 1000)

    # --- derived lists (cached until the next change) --------------------------------------------

    def others(self) -> list[str]:
        """The other members' names, sorted."""
        if self._others is None:
            self._others = sorted(n for n in self.namespaces if n != self.node_id)
        return self._others

    def targets(self) -> tuple[list[str], list[str]]:
        """Addresses of the remote members worth gossiping with: live ones and down ones (each
        sorted). Members that left or announced their shutdown are neither."""
        cached = self._targets
        if cached is not None and cached[0] == self.structure:
            return cached[1], cached[2]
        live: list[str] = []
        down: list[str] = []
        for node_id, ns in self.namespaces.items():
            peer = self.peers.get(node_id)
            if peer is None or gone(peer, ns) or (addr := addr_of(ns)) is None:
                continue
            (down if peer.liveness == "down" else live).append(addr)
        live.sort()
        down.sort()
        self._targets = (self.structure, live, down)
        return live, down

    def visible(self) -> list[tuple[str, Namespace]]:
        """Members this peer considers present: itself and every remote member not down or gone
        (the same list until the next change: do not modify it)."""
        stamp = (self.structure, self.me.max_version)
        if self._visible is not None and self._visible[0] == stamp:
            return self._visible[1]
        out = []
        for node_id, ns in self.namespaces.items():
            if node_id != self.node_id:
                peer = self.peers[node_id]
                if peer.liveness == "down" or gone(peer, ns):
                    continue
            out.append((node_id, ns))
        self._visible = (stamp, out)
        return out

    def voided(self, node_id: str, ns: Namespace) -> bool:
        """Removed: this incarnation, or the admission it resumed after a restart (a member
        removed while it was away must rejoin as a new member, not come back as its old age)."""
        admitted = admitted_of(ns)
        return self.decisions.is_removed(node_id, ns.generation) or (
            admitted is not None and self.decisions.is_removed(node_id, admitted)
        )

    # --- rows for the API ---------------------------------------------------------------------

    def rows(self, leader: str | None, level: Callable[[str], float]) -> list[MemberView]:
        """The membership table as the API shows it (sorted by name), removed incarnations
        included; ``level`` gives the failure detector's suspicion of a member (``phi``)."""
        t = self
        ranked = sorted(
            Age(up_of(ns), ns.generation, n)
            for n, ns in t.visible()
            if status_of(ns) in ("up", "leaving") and up_of(ns) > 0
        )
        rank = {age.node_id: i + 1 for i, age in enumerate(ranked)}
        rows: list[MemberView] = []
        for node_id, ns in sorted(t.namespaces.items()):
            status: str = status_of(ns)
            peer = t.peers.get(node_id)
            phi: float | None = None
            reachable = True
            if peer is not None:
                phi = level(node_id)
                reachable = peer.liveness != "down"
                if gone(peer, ns):
                    status = "left"
                elif peer.liveness == "down":
                    status = "down"
            up = up_of(ns)
            rows.append(
                MemberView(
                    name=node_id,
                    address=addr_of(ns),
                    status=status,
                    reachable=reachable,
                    up_number=up or None,
                    age_rank=rank.get(node_id),
                    generation=ns.generation,
                    heartbeat=ns.heartbeat,
                    phi=phi,
                    metadata=metadata_of(ns),
                    is_leader=node_id == leader,
                    is_self=node_id == self.node_id,
                )
            )
        for node_id, (gen, _) in sorted(t.decisions.removed.items()):
            if node_id not in t.namespaces:
                rows.append(
                    MemberView(
                        node_id, None, "removed", False, None, None, gen, 0, None, {}, False, False
                    )
                )
        rows.sort(key=lambda r: r.name)
        return rows


def gone(peer: Peer | None, ns: Namespace) -> bool:
    """Left the cluster (its own word, or a shutdown notice)."""
    return status_of(ns) == "left" or (peer is not None and peer.shutdown_noticed)


def status_of(ns: Namespace) -> SelfStatus:
    item = ns.entries.get("status")  # ns.get, inlined: leader duties ask this of every member
    value = None if item is None else item[0]
    if type(value) is str and value in _SELF_STATUSES:
        return value  # type: ignore[return-value]
    return "joining"


def up_of(ns: Namespace) -> int:
    item = ns.entries.get("up")
    value = None if item is None else item[0]
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_COUNTER:
        return value
    return 0


def admitted_of(ns: Namespace) -> int | None:
    """The generation whose admission a member's ``up`` status rests on (``None``: not up)."""
    value = ns.get("admitted")
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNTER:
        return value
    return None


def addr_of(ns: Namespace) -> str | None:
    value = ns.get("addr")
    if not isinstance(value, str) or not 0 < len(value) <= 300 or not _parses(value):
        return None
    return value


@functools.lru_cache(maxsize=4096)
def _parses(value: str) -> bool:
    # Cached: the data path looks up a member's address for every replica request.
    try:
        Address.parse(value)
    except ValueError:
        return False
    return True


def metadata_of(ns: Namespace) -> dict[str, str]:
    return {
        key[len(META_PREFIX) :]: value
        for key, (value, _) in sorted(ns.entries.items())
        if key.startswith(META_PREFIX) and isinstance(value, str)
    }
