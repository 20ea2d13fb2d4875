"""When to gossip and with whom: eager rounds while there is news, probes always.

A quiet peer's only exchanges are the failure detector's probes, one member every
``probe_interval`` (each probe is a full exchange, so views that differ are repaired then too;
a joiner, which has no say yet, does not probe).
A peer that learned or wrote something gossips eagerly: ``fanout`` random live members every
``gossip_interval``, for ``eager_rounds(N)`` rounds after the last news, which spreads it to every
member in O(log N) rounds; a joiner gossips eagerly until it is admitted. Either kind of round
may add a down member (with probability ``down / (live + 1)``) and a seed not among the live
members (so partitions heal and a group that found only some of its seeds keeps trying the rest).

:meth:`Rounds.plan` returns what to send now and when to ask again; the runtime sleeps until
then, or until news (the table's ``on_news``) wakes it earlier.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .._messages import Syn
from ._detector import FailureDetector
from ._exchange import Exchange
from ._table import MemberTable, addr_of


@dataclass(frozen=True, slots=True)
class RoundPlan:
    """What to send now, and when to plan again.

    Attributes:
      syn: the SYN every exchange below starts with (``None`` when there are none).
      gossip: addresses to gossip with.
      probes: ``(member, address)`` pairs to probe (report the outcome to the detector).
      next_at: when to plan again, unless news comes first.
    """

    syn: Syn | None
    gossip: tuple[str, ...]
    probes: tuple[tuple[str, str], ...]
    next_at: float


class Rounds:
    """Plans one peer's gossip rounds and probes.

    Args:
      table: the members.
      detector: which members to probe.
      exchange: builds the SYN.
      seeds: addresses to join through and keep trying.
      now: current ``trio.current_time()``.
    """

    def __init__(
        self,
        table: MemberTable,
        detector: FailureDetector,
        exchange: Exchange,
        seeds: list[str],
        now: float,
    ) -> None:
        self._t = table
        self._detector = detector
        self._exchange = exchange
        self.seeds = seeds
        self._next_round_at = now
        self._eager_left = 0
        self._news_seen = table.news

    def plan(self, now: float, rng: random.Random, *, joining: bool) -> RoundPlan:
        """The exchanges to start now (see the module docstring)."""
        t = self._t
        config = t.config
        if t.news != self._news_seen:
            self._news_seen = t.news
            self._eager_left = config.eager_rounds(len(t.namespaces))
        eager = joining or self._eager_left > 0
        live, down = t.targets()
        gossip: list[str] = []
        any_round = False
        if eager and now >= self._next_round_at:
            # A slow peer (see the detector's local health) gossips less often too.
            self._next_round_at = now + config.gossip_interval * self._detector.stretch
            self._eager_left = max(0, self._eager_left - 1)
            gossip = rng.sample(live, min(config.fanout, len(live)))
            any_round = True
        probes: list[tuple[str, str]] = []
        # A joiner does not probe: what it would conclude (about the seed it waits on, busy
        # with a join storm) everyone would adopt, and it has no say in the cluster yet.
        if not joining:
            due, ticked = self._detector.due(now, rng)
            any_round = any_round or ticked
            for node_id in due:
                ns = t.namespaces.get(node_id)
                addr = addr_of(ns) if ns is not None else None
                if addr is not None:
                    probes.append((node_id, addr))
            probed = {addr for _, addr in probes}
            gossip = [a for a in gossip if a not in probed]  # a probe is an exchange too
        if any_round:
            t.counters.rounds += 1
            t.me.heartbeat += 1
            gossip += self._extras(live, down, gossip, [a for _, a in probes], rng)
        if joining:
            next_at = self._next_round_at
        else:
            next_at = self._detector.next_due()
            if self._eager_left > 0:
                next_at = min(next_at, self._next_round_at)
        syn = self._exchange.syn() if gossip or probes else None
        return RoundPlan(syn, tuple(dict.fromkeys(gossip)), tuple(probes), max(next_at, now))

    def _extras(
        self,
        live: list[str],
        down: list[str],
        gossip: list[str],
        probed: list[str],
        rng: random.Random,
    ) -> list[str]:
        """A down member now and then, and a seed not among the live members."""
        picked = gossip + probed
        out: list[str] = []
        if down and rng.random() < len(down) / (len(live) + 1):
            out.append(rng.choice(down))
        # A seed not among the live members (never heard from, or known only as down): after a
        # restart the remembered members are all seeds, and a group that found only some of
        # them must keep trying the rest, or it stays a group apart.
        seeds = self.seeds
        live_set = set(live)
        unreached = [s for s in seeds if s not in live_set and s not in picked]
        if unreached and len(unreached) == len([s for s in seeds if s not in picked]):
            if len(live) < len(seeds) or rng.random() < len(seeds) / (len(live) + len(down) + 1):
                out.append(rng.choice(unreached))
        elif unreached and rng.random() < len(unreached) / (len(live) + len(unreached) + 1):
            out.append(rng.choice(unreached))
        return [a for a in out if a not in picked]
