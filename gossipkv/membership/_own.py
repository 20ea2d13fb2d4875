"""This peer's own entry: its lifecycle, what it publishes about itself, and its defence.

Only the owner writes a namespace. :class:`OwnEntry` is the one writer of this peer's: its
lifecycle status (``joining -> up -> leaving -> left``, the ``up`` promotion once the leader's
grant arrives, a rejoin as a new incarnation after a removal), its metadata, and its answers to
gossip about itself that it never wrote. Entries at versions it never reached are forgeries and
are outbid (SWIM's refutation, with a margin); a suspicion or down verdict about its current
version is refuted by writing a newer one, which every peer takes as proof of life.
"""

from __future__ import annotations

from ._leader import Decisions
from ._state import Namespace
from ._table import META_PREFIX, MemberTable, SelfStatus, admitted_of, status_of, up_of

#: How far above a forged version of itself a member writes its own entries again.
_REFUTE_MARGIN = 1 << 16
#: The key a member bumps to refute a suspicion or a verdict about it.
ALIVE = "alive"


class OwnEntry:
    """The lifecycle and defence of this peer's own namespace.

    Args:
      table: the members (this peer's namespace is ``table.me``).
      address: the ``host:port`` others reach this peer at.
      generation: this incarnation's generation.
    """

    def __init__(self, table: MemberTable, address: str, generation: int) -> None:
        self._t = table
        self.address = address
        self.generation = generation
        self.needs_reincarnation = False
        #: Set by the runtime while a leaving member's partitions and hints are handed off: it
        #: stays ``leaving`` (serving as a source) until they are.
        self.hold_leave = False
        self.replaces: str | None = None
        self._leave_deadline: float | None = None
        self.left_at: float | None = None
        self._new_namespace(generation)

    def _new_namespace(self, generation: int) -> Namespace:
        ns = Namespace(self._t.node_id, generation)
        self._t.add(ns)
        ns.set("addr", self.address)
        ns.set("status", "joining")
        ns.set("up", 0)
        self._t.learned()
        return ns

    @property
    def status(self) -> SelfStatus:
        return status_of(self._t.me)

    @property
    def up_number(self) -> int:
        return up_of(self._t.me)

    @property
    def resumed(self) -> bool:
        admitted = admitted_of(self._t.me)
        return admitted is not None and admitted < self.generation

    # --- lifecycle ---------------------------------------------------------------------------------

    def promote(self, up_number: int, admitted: int) -> None:
        self._t.write("up", up_number)
        self._t.write("admitted", admitted)  # the generation the grant was made for
        self._t.write("status", "up")

    def next_generation(self, wall_ms: int) -> int:
        """The generation to rejoin with after a removal: above this incarnation and above the
        removed one (one rejoin, not one per removed generation), else the wall clock."""
        removed = self._t.decisions.removed.get(self._t.node_id, (0, 0))[0]
        return max(self.generation + 1, removed + 1, wall_ms)

    def reincarnate(self, generation: int, now: float) -> None:
        """Continue as a new incarnation (after this one was removed): rejoin as ``joining``."""
        old = self._t.me
        metadata = {k: v for k, (v, _) in old.entries.items() if k.startswith(META_PREFIX)}
        self.generation = generation
        ns = self._new_namespace(generation)
        for key, value in metadata.items():
            ns.set(key, value)
        self.needs_reincarnation = False
        self._t.event(now, "restarted", self._t.node_id, generation, "rejoining after removal")

    def start_leave(self, now: float, leave_timeout: float) -> None:
        """Begin a graceful leave: announce ``leaving`` and wait for the leader's acknowledgement."""
        if self.status in ("leaving", "left"):
            return
        if self.status == "joining":
            self.set_left(now)
            return
        self._t.write("status", "leaving")
        self._leave_deadline = now + leave_timeout
        self._t.event(now, "leaving", self._t.node_id, self.generation)

    def set_left(self, now: float) -> None:
        self._t.write("status", "left")
        self.left_at = now
        self._t.event(now, "left", self._t.node_id, self.generation)

    def evaluate(self, now: float, voided: bool) -> None:
        """Move along the lifecycle: rejoin after a removal (``voided``), go up once granted,
        finish a leave once acknowledged (or timed out) and handed off."""
        status = self.status
        decisions: Decisions = self._t.decisions
        if voided and status != "left":
            if status == "leaving":
                self.set_left(now)  # going anyway: no point rejoining
            else:
                self.needs_reincarnation = True
            return
        if status == "joining":
            grant = decisions.grants.get(self._t.node_id)
            if grant is not None and grant.generation == self.generation:
                self.promote(grant.up_number, grant.generation)
                self._t.event(
                    now, "up", self._t.node_id, self.generation, f"up_number {grant.up_number}"
                )
        elif status == "leaving":
            done = decisions.exited.get(self._t.node_id) == self.generation
            expired = self._leave_deadline is not None and now >= self._leave_deadline
            # The runtime holds the leave while this member's data is still being handed off.
            if (done or expired) and not self.hold_leave:
                self.set_left(now)

    def next_deadline(self) -> float | None:
        """When a leave times out (``None``: no leave waiting)."""
        return self._leave_deadline if self.status == "leaving" else None

    def set_metadata(self, key: str, value: str | None) -> None:
        """Set (or with ``None`` delete) a user metadata key, visible at every peer.

        Raises:
          ValueError: key or value too long, or too many keys.
        """
        config = self._t.config
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise ValueError("metadata key must be a non-empty string of at most 128 characters")
        me = self._t.me
        if value is not None:
            if not isinstance(value, str):
                raise ValueError("metadata value must be a string or None")
            if len(value.encode()) > config.max_metadata_bytes:
                raise ValueError(f"metadata value exceeds {config.max_metadata_bytes} bytes")
            present = sum(
                1 for k, (v, _) in me.entries.items() if k.startswith(META_PREFIX) and v is not None
            )
            if me.get(META_PREFIX + key) is None and present >= config.max_metadata_keys:
                raise ValueError(f"at most {config.max_metadata_keys} metadata keys")
        self._t.write(META_PREFIX + key, value)

    # --- defence -----------------------------------------------------------------------------------

    def refute(self, max_version: int, heartbeat: int) -> None:
        """Gossip about this incarnation that this peer never wrote (a higher version or
        heartbeat) is a forgery: its entries could mark us left or silence our heartbeat at every
        peer that took them. Refuse it, and outbid it the way SWIM refutes a suspicion: every
        entry of ours is written again above the forged version, so the truth spreads and wins.
        """
        own = self._t.me
        if max_version <= own.max_version and heartbeat <= own.heartbeat:
            return
        self._t.refuse(
            "forged_self", f"our incarnation at version {max_version}, heartbeat {heartbeat}"
        )
        own.heartbeat = max(own.heartbeat, heartbeat) + 1
        # Far above the claim: the first claim seen need not be the highest forged (one peer may
        # hold version 16 while another reports 11), and an entry forged at a version this peer
        # later reaches by its own writes would never be replaced.
        top = max(own.max_version, max_version) + _REFUTE_MARGIN
        for key, (value, _) in sorted(own.entries.items(), key=lambda item: item[1][1]):
            top += 1
            own.put(key, value, top)
        self._t.learned()

    def refute_report(self, version: int) -> bool:
        """A member reported this incarnation suspect or down at ``version``: prove it wrong
        with a newer version (a claim above any version we wrote is a forgery, outbid).
        Returns whether anything was written."""
        own = self._t.me
        if version > own.max_version:
            self.refute(version, 0)
            return True
        if version < own.max_version:
            return False  # our newer version is spreading already and answers it
        count = own.get(ALIVE)
        self._t.write(ALIVE, (count if type(count) is int else 0) + 1)
        return True
