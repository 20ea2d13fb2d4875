"""SWIM failure detection: probes, suspicions, and down verdicts published in members' namespaces.

Every ``probe_interval`` a peer probes the next member of a shuffled round robin (the runtime
does it with a gossip exchange), so each member is probed about once an interval by someone,
whatever the cluster's size. When that fails, the runtime tries again while ``indirect_probes``
other members try for it: a lost message, or a broken link between two members, is no failure of
either. When all fail, the member is *suspect* here, and re-probed every half interval. The
suspicion becomes a *down* verdict once three re-probes failed as well and it has lasted the
suspicion timeout: the short one (``suspicion_timeouts``) when every probe was refused at once (no
process listens there: it crashed), the long one, four times as long, when probes only went
unanswered (a slow member, or one cut off, is not to be confused with a dead one). The verdict
is published in this peer's namespace (key ``verdicts``) and every peer adopts it as soon as it
learns of it. Suspicions stay local: publishing them, and having other peers probe to confirm
them, piles load on a member that is merely slow, which on a saturated machine makes it slower.

Each verdict names the member's newest version the reporter knew. The member refutes it by
writing a newer version (see ``_own``), and a peer that knows a newer version than a verdict's
ignores the verdict, so a member that answers again is alive everywhere once its refutation has
spread. A successful probe ends this peer's own suspicion.

The observer may be the slow one. A probe whose outcome came in much later than its timeouts
allow is inconclusive (this peer's own loop was late), and a peer that was stalled outright drops
its suspicions and passes no verdict for ``pause_guard`` seconds after it notices. A peer that is
merely slow (its loop late, members finding it unreachable) probes less often and waits longer, as
Lifeguard's local health multiplier has it: its :attr:`FailureDetector.awareness` rises with each
sign of slowness and falls with each probe answered, and stretches the probe interval and timeouts
(and the eager gossip rounds) up to eightfold, so an overloaded cluster sheds load instead of
accusing itself into more of it. Pure: no clock, no I/O; time and randomness are arguments.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from ._leader import MAX_COUNTER
from ._records import ProbeCounters
from ._table import MemberTable, addr_of, gone

DOWN = 2
#: The key of a member's namespace holding its verdicts: ``{member: [generation, version, 2]}``.
VERDICTS = "verdicts"
#: Probes of a suspect, after the one that made it suspect, that must fail before a verdict.
_REPROBES = 3
#: The highest local health score: probes and their timeouts stretch up to this plus one times.
MAX_AWARENESS = 7
#: Event-loop lag (seconds) that counts as a sign of this peer's own slowness.
_SLOW_LAG = 0.1

Report = tuple[int, int, int]  # (generation, version, level)


@dataclass(slots=True)
class Suspicion:
    """This peer's own suspicion of a member (its probes, direct and indirect, failed)."""

    since: float
    version: int  # the member's newest version known then
    reprobe_at: float
    refused: bool  # every failed probe was refused at once (nothing listens there)
    failures: int = 0  # probes that failed since


class FailureDetector:
    """SWIM probing, suspicion and verdicts over one peer's :class:`MemberTable`.

    Args:
      table: the members.
      now: current ``trio.current_time()``.
    """

    def __init__(self, table: MemberTable, now: float) -> None:
        self._t = table
        self._interval = table.config.probe_interval
        self._order: list[str] = []  # the rest of this cycle of the round robin, next last
        self._next_probe_at = now
        self._suspects: dict[str, Suspicion] = {}
        #: Members whose connection with this peer broke: probed at the next look.
        self._soon: dict[str, None] = {}
        #: This peer's published verdicts.
        self._own: dict[str, Report] = {}
        self._guard_until = now
        self._stall_noticed = -math.inf
        #: Lifeguard's local health: 0 when this peer keeps up, up to MAX_AWARENESS when slow.
        self.awareness = 0
        self.counters = ProbeCounters()

    # --- local health -----------------------------------------------------------------------------

    @property
    def stretch(self) -> int:
        """How many times the configured probe interval and timeouts this peer uses now."""
        return 1 + self.awareness

    def probe_timeout(self) -> float:
        """How long one probe exchange waits now."""
        return self._t.config.probe_timeout * self.stretch

    def note_lag(self, lag: float) -> None:
        """The runtime measured this peer's event-loop lag: a late loop is a slow peer."""
        if lag > _SLOW_LAG:
            self._slower()

    def refuting(self) -> None:
        """Someone found this peer unreachable: most likely it is slow (or its links are)."""
        self._slower()

    def missed_nacks(self) -> None:
        """A failed probe's helpers did not answer at all: most likely this peer is slow."""
        self.counters.missed_nacks += 1
        self._slower()

    def _slower(self) -> None:
        self.awareness = min(MAX_AWARENESS, self.awareness + 1)

    # --- probing ----------------------------------------------------------------------------------

    def due(self, now: float, rng: random.Random) -> tuple[list[str], bool]:
        """The members to probe now: the next of the round robin once an interval and suspects
        every half interval; and whether an interval passed (a quiet peer's gossip round, see
        ``_rounds``)."""
        out: list[str] = []
        ticked = now >= self._next_probe_at
        if ticked:
            # No burst of catch-up probes after a stall: the next one is an interval away.
            self._next_probe_at = max(self._next_probe_at + self._interval * self.stretch, now)
            target = self._next_in_order(rng)
            if target is not None:
                out.append(target)
        for node_id in self._soon:
            if node_id not in out and node_id not in self._suspects and self._probeable(node_id):
                out.append(node_id)
        self._soon.clear()
        for node_id, suspicion in self._suspects.items():
            if now >= suspicion.reprobe_at and node_id not in out:
                # Not again until this probe's outcome is in (or surely overdue).
                suspicion.reprobe_at = now + 6 * self.probe_timeout() + self._interval
                out.append(node_id)
        self.counters.probes += len(out)
        return out, ticked

    def next_due(self) -> float:
        """When :meth:`due` next has something (``-inf``: now)."""
        if self._soon:
            return -math.inf
        return min([self._next_probe_at, *(s.reprobe_at for s in self._suspects.values())])

    def lost_contact(self, node_id: str) -> None:
        """This peer's connection with ``node_id`` broke (a crashed process's sockets close at
        once): probe it at the next look instead of when the round robin comes to it. A probe
        of a member that merely closed an idle link is answered, and that is all."""
        if node_id != self._t.node_id and node_id not in self._suspects:
            self._soon[node_id] = None

    def _next_in_order(self, rng: random.Random) -> str | None:
        for _ in range(2):
            while self._order:
                node_id = self._order.pop()
                if self._probeable(node_id) and node_id not in self._suspects:
                    return node_id
            cycle = [n for n in self._t.others() if self._probeable(n)]
            rng.shuffle(cycle)
            self._order = cycle
        return None

    def _probeable(self, node_id: str) -> bool:
        ns = self._t.namespaces.get(node_id)
        peer = self._t.peers.get(node_id)
        return (
            ns is not None
            and peer is not None
            and peer.liveness != "down"
            and not gone(peer, ns)
            and addr_of(ns) is not None
        )

    def helpers(
        self, node_id: str, rng: random.Random, connected: Callable[[str], bool] = lambda _: False
    ) -> list[str]:
        """Addresses of up to ``indirect_probes`` live members to probe ``node_id`` for us,
        chosen first among those this peer has a connection with (``connected``). Each other
        helper costs a new connection, and after a crash every survivor asks at once."""
        ns = self._t.namespaces.get(node_id)
        target = addr_of(ns) if ns is not None else None
        pool = [a for a in self._t.targets()[0] if a != target]
        self.counters.indirect_probes += 1
        want = min(self._t.config.indirect_probes, len(pool))
        near: list[str] = []
        rest: list[str] = []
        for a in pool:
            (near if connected(a) else rest).append(a)
        chosen = rng.sample(near, min(want, len(near)))
        if len(chosen) < want:
            chosen += rng.sample(rest, want - len(chosen))
        return chosen

    def probe_ok(self, node_id: str, now: float) -> None:
        """A probe of ``node_id`` (direct or indirect) was answered."""
        self.awareness = max(0, self.awareness - 1)
        if self._suspects.pop(node_id, None) is None:
            return
        peer = self._t.peers.get(node_id)
        ns = self._t.namespaces.get(node_id)
        if peer is not None and ns is not None and peer.liveness == "suspect":
            peer.liveness = "alive"
            self._t.event(now, "alive", node_id, ns.generation, "answered a probe")

    def probe_inconclusive(self, node_id: str) -> None:
        """A probe of ``node_id`` ended so late that this peer's own loop was the slow one."""
        self._slower()
        suspicion = self._suspects.get(node_id)
        if suspicion is not None:
            suspicion.reprobe_at = 0.0  # again at the next look

    def probe_failed(self, node_id: str, started: float, now: float, *, refused: bool) -> None:
        """Neither ``node_id`` nor the members asked to try for it answered a probe begun at
        ``started``; ``refused``: every exchange with it failed at once (nothing listens)."""
        self.counters.probes_failed += 1
        suspicion = self._suspects.get(node_id)
        if suspicion is not None:
            # Re-probed soon, so that a member that is really gone (refusing connections)
            # is found down as soon as the suspicion timeout allows.
            suspicion.reprobe_at = now + self._interval * self.stretch / 2
        if started <= self._stall_noticed or now < self._guard_until:
            return  # this peer may have been the one stalled
        peer = self._t.peers.get(node_id)
        ns = self._t.namespaces.get(node_id)
        if peer is None or ns is None or gone(peer, ns):
            return
        if suspicion is not None:
            suspicion.failures += 1
            suspicion.refused = suspicion.refused and refused
            self._conclude(node_id, suspicion, now)
            return
        if peer.liveness != "alive":
            return
        peer.liveness = "suspect"
        self._suspects[node_id] = Suspicion(
            now, ns.max_version, now + self._interval * self.stretch / 2, refused
        )
        self.counters.suspicions += 1
        why = "refuses connections" if refused else "no answer to probes"
        self._t.event(now, "suspect", node_id, ns.generation, why)

    # --- verdicts ---------------------------------------------------------------------------------

    def evaluate(self, now: float) -> None:
        """Turn suspicions that ran their course into down verdicts."""
        for node_id, suspicion in list(self._suspects.items()):
            self._conclude(node_id, suspicion, now)

    def _timeout(self, suspicion: Suspicion) -> float:
        shortest, longest = self._t.config.suspicion_timeouts(len(self._t.namespaces))
        return shortest if suspicion.refused else longest

    def _conclude(self, node_id: str, suspicion: Suspicion, now: float) -> None:
        """A suspicion becomes a down verdict once it ran its timeout and the re-probes of it
        failed too (a lossy network fails single probes, rarely four in a row)."""
        ns = self._t.namespaces.get(node_id)
        if ns is None:
            del self._suspects[node_id]
            return
        if now < self._guard_until or suspicion.failures < _REPROBES:
            return
        if now - suspicion.since < self._timeout(suspicion):
            return
        del self._suspects[node_id]
        self.counters.verdicts += 1
        self._down(node_id, suspicion.version, now, f"no answer for {now - suspicion.since:.1f}s")
        self._publish(node_id, (ns.generation, suspicion.version, DOWN))

    def next_deadline(self) -> float:
        """When the first suspicion whose re-probes failed runs out (``inf``: none; the others
        are concluded as their probes fail)."""
        out = math.inf
        for suspicion in self._suspects.values():
            if suspicion.failures >= _REPROBES:
                out = min(out, suspicion.since + self._timeout(suspicion))
        return max(out, self._guard_until) if out < math.inf else out

    def level(self, node_id: str, now: float) -> float:
        """How far this peer's suspicion of ``node_id`` has run (see ``MemberView.phi``)."""
        peer = self._t.peers.get(node_id)
        if peer is not None and peer.liveness == "down":
            return 1.0
        suspicion = self._suspects.get(node_id)
        if suspicion is None:
            return 0.0
        return round(min(1.0, (now - suspicion.since) / self._timeout(suspicion)), 3)

    def reported(self, reporter: str, raw: object, now: float) -> int | None:
        """``reporter`` published ``raw`` as its verdicts. Adopts them, and returns the highest
        version any of them claims of this peer's own incarnation (``None``: none), which the
        own entry refutes."""
        reports = _parse(raw)
        if reports is None:
            self._t.counters.bad_values += 1
            return None
        claim: int | None = None
        me = self._t.me
        for about, (generation, version, _) in reports.items():
            if about == self._t.node_id:
                if generation == me.generation:
                    claim = max(claim or 0, version)
                continue
            ns = self._t.namespaces.get(about)
            peer = self._t.peers.get(about)
            if (
                ns is None
                or peer is None
                or ns.generation != generation
                or ns.max_version > version
                or gone(peer, ns)
                or peer.liveness == "down"
            ):
                continue  # another incarnation, refuted already, or down here already
            self._down(about, version, now, f"found down by {reporter}")
        return claim

    def advanced(self, node_id: str, now: float) -> None:
        """``node_id``'s newest known version rose: a verdict or suspicion older than it no
        longer holds."""
        peer = self._t.peers.get(node_id)
        ns = self._t.namespaces.get(node_id)
        if peer is None or ns is None:
            return
        version = ns.max_version
        suspicion = self._suspects.get(node_id)
        if suspicion is not None and version > suspicion.version:
            del self._suspects[node_id]
            if peer.liveness == "suspect":
                peer.liveness = "alive"
                self._t.event(now, "alive", node_id, ns.generation, "wrote since")
        if peer.liveness == "down" and version > peer.down_version:
            peer.liveness = "alive"
            peer.down_since = None
            self._t.event(now, "alive", node_id, ns.generation, "refuted the verdict")
        own = self._own.get(node_id)
        if own is not None and version > own[1]:
            self._retract(node_id)

    def _down(self, node_id: str, version: int, now: float, detail: str) -> None:
        peer = self._t.peers[node_id]
        peer.liveness = "down"
        peer.down_since = now
        peer.down_version = version
        self._suspects.pop(node_id, None)
        self._t.event(now, "down", node_id, self._t.namespaces[node_id].generation, detail)

    def forget(self, node_id: str) -> None:
        """``node_id``'s incarnation is gone (removed, or replaced by a newer one)."""
        self._suspects.pop(node_id, None)
        self._retract(node_id)

    def pause_guard(self, now: float) -> None:
        """This peer was stalled: what it concluded meanwhile is void, and for ``pause_guard``
        seconds it passes no verdict."""
        self._guard_until = now + self._t.config.pause_guard
        self._stall_noticed = now
        for node_id in list(self._suspects):
            del self._suspects[node_id]
            peer = self._t.peers.get(node_id)
            ns = self._t.namespaces.get(node_id)
            if peer is not None and ns is not None and peer.liveness == "suspect":
                peer.liveness = "alive"
                self._t.event(now, "alive", node_id, ns.generation, "suspected during a stall")

    # --- this peer's verdicts -----------------------------------------------------------------------

    def _publish(self, node_id: str, report: Report) -> None:
        self._own[node_id] = report
        self.republish()

    def _retract(self, node_id: str) -> None:
        if self._own.pop(node_id, None) is not None:
            self.republish()

    def republish(self) -> None:
        """Write this peer's verdicts into its namespace (a new incarnation's too)."""
        if self._own or self._t.me.get(VERDICTS) is not None:
            plain = {n: list(r) for n, r in sorted(self._own.items())}
            self._t.write(VERDICTS, plain)


def _parse(raw: object) -> dict[str, Report] | None:
    """A member's published verdicts, or ``None`` if they are malformed."""
    if not isinstance(raw, dict):
        return None
    out: dict[str, Report] = {}
    for key, value in raw.items():
        if (
            not isinstance(key, str)
            or not isinstance(value, list)
            or len(value) != 3
            or not all(type(v) is int and 0 <= v < MAX_COUNTER for v in value)
            or value[2] != DOWN
        ):
            return None
        out[key] = (value[0], value[1], value[2])
    return out
