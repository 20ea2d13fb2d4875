"""What the membership core shows the rest of the program: table rows, events and counters.

Plain records, built by the core and read by the runtime, the API and the CLI; nothing here
decides anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class MemberView:
    """One row of a peer's membership table, as the CLI and the API show it.

    Attributes:
      name: the member's name.
      address: the ``host:port`` it advertises (``None`` for a removed incarnation).
      status: ``joining``, ``up``, ``leaving``, ``left``, ``down`` (this peer's verdict) or
        ``removed`` (the leader's decision).
      reachable: whether this peer currently considers it alive.
      up_number: the order in which the leader admitted it (``None`` before that).
      age_rank: 1 for the oldest up member (the leader, when reachable), 2 for the next, ...
      generation: the incarnation's generation.
      heartbeat: the newest heartbeat (gossip round count) this peer has seen from it.
      phi: how far this peer's suspicion of it has run: 0 while it answers, then the
        fraction of the suspicion timeout elapsed (1 or more once it is down; ``None`` for the
        peer itself). Suspicion comes from failed probes (SWIM), not from silence.
      metadata: what the member published with ``set_metadata``.
      is_leader: whether this peer sees it as the leader.
      is_self: whether it is the peer whose table this is.
    """

    name: str
    address: str | None
    status: str  # joining | up | leaving | left | down | removed
    reachable: bool
    up_number: int | None
    age_rank: int | None
    generation: int
    heartbeat: int
    phi: float | None
    metadata: dict[str, str]
    is_leader: bool
    is_self: bool


@dataclass(frozen=True, slots=True)
class MembershipEvent:
    """Something that happened to a member, as this peer saw it.

    Attributes:
      at: ``trio.current_time()`` when this peer noticed it.
      kind: ``joined``, ``up``, ``suspect``, ``down``, ``alive``, ``leaving``, ``left``,
        ``removed``, ``restarted`` or ``leader`` (a new leader, named by ``node_id``; ``""``
        when there is none).
      node_id: the member it happened to.
      generation: that member's generation (0 for ``leader``).
      detail: a human-readable note, such as ``"no answer to probes"``.
    """

    at: float
    kind: str  # joined|up|suspect|down|alive|leaving|left|removed|restarted|leader
    node_id: str
    generation: int
    detail: str = ""


@dataclass(slots=True)
class GossipCounters:
    rounds: int = 0
    syns_received: int = 0
    deltas_applied: int = 0
    stale_ignored: int = 0
    quarantined: int = 0
    identity_conflicts: int = 0
    bad_values: int = 0
    budget_truncations: int = 0
    pause_guards: int = 0
    #: Gossip refused because no honest member could have sent it, by reason (see
    #: :meth:`Decisions.vet`, plus ``generation_ahead`` for a member's own entry,
    #: ``shutdown_not_own`` for a shutdown notice sent for another member, and ``forged_self``
    #: for entries of this incarnation, or verdicts about it, at versions it never wrote).
    refused: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ProbeCounters:
    """What failure detection did (the node's statistics report each)."""

    probes: int = 0
    probes_failed: int = 0
    indirect_probes: int = 0
    suspicions: int = 0
    refuted: int = 0
    verdicts: int = 0
    #: Failed probes whose helpers did not answer at all (this peer may be the slow one).
    missed_nacks: int = 0
