"""Repair after quarantine: a record this peer could not read is fetched back from the replicas.

When a storage engine finds a record it cannot read (a failed checksum, bytes that do not decode
into a clock), it moves the record aside and forgets the key (see ``storage/_log.py``); the peer
keeps serving. :class:`QuarantineRepair` then restores what was lost, in the background:

* a data key is read from every reachable owner and this replica is brought up to date by
  ``sync`` (a read repair that waits for every owner, not just R);
* a hint (a write kept for an unreachable owner) is written again from this replica's own copy
  of the key, which a stand-in always stores beside the hint.

Keys wait in a bounded set until a round succeeds (the cluster may not have formed yet right
after a start); past the bound they are left to anti-entropy and counted as ``dropped``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ._antientropy import run_jittered
from ._errors import GossipKVError

log = logging.getLogger("gossipkv.repair")

#: Keys (and hints) waiting for repair at once; more are left to anti-entropy.
MAX_PENDING = 100_000


@dataclass(slots=True)
class RepairCounters:
    """What the repair of quarantined records did (reported in ``NodeStatistics``)."""

    keys_repaired: int = 0
    hints_rewritten: int = 0
    dropped: int = 0
    errors: int = 0


class QuarantineRepair:
    """Restores quarantined keys and hints from the replicas, one round per ``interval``.

    Args:
      repair_key: reads a key from every reachable owner and repairs the stale replicas; True
        when another replica answered (so this one is repaired), False to try again later.
      rewrite_hint: writes the hint for ``(owner, key)`` again from the local copy.
      interval: seconds between rounds (jittered).
      rng: the jitter's randomness.
    """

    def __init__(
        self,
        *,
        repair_key: Callable[[str], Awaitable[bool]],
        rewrite_hint: Callable[[str, str], Awaitable[None]],
        interval: float,
        rng: random.Random,
    ) -> None:
        self._repair_key = repair_key
        self._rewrite_hint = rewrite_hint
        self._interval = interval
        self._rng = rng
        self._keys: dict[str, None] = {}
        self._hints: dict[tuple[str, str], None] = {}
        self.counters = RepairCounters()

    @property
    def pending(self) -> int:
        """Keys and hints still waiting for repair."""
        return len(self._keys) + len(self._hints)

    def key_quarantined(self, key: str) -> None:
        """A data record of ``key`` was quarantined: repair it in the next round."""
        if key not in self._keys and self._room():
            self._keys[key] = None

    def hint_quarantined(self, owner: str, key: str) -> None:
        """The hint of ``key`` for ``owner`` was quarantined: write it again in the next round."""
        if (owner, key) not in self._hints and self._room():
            self._hints[(owner, key)] = None

    def _room(self) -> bool:
        if self.pending < MAX_PENDING:
            return True
        self.counters.dropped += 1
        return False

    async def run(self) -> None:
        """Repair rounds until cancelled."""
        await run_jittered(self._interval, self._rng, self.round, self._failed)

    def _failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        log.debug("quarantine repair round failed: %s", exc)

    async def round(self) -> None:
        """Try every waiting key and hint once; what fails waits for the next round."""
        for key in list(self._keys):
            try:
                repaired = await self._repair_key(key)
            except GossipKVError as exc:
                self._failed(exc)
                continue
            if repaired:
                del self._keys[key]
                self.counters.keys_repaired += 1
                log.info("repaired quarantined key %r from the other replicas", key)
        for owner, key in list(self._hints):
            try:
                await self._rewrite_hint(owner, key)
            except GossipKVError as exc:
                self._failed(exc)
                continue
            del self._hints[(owner, key)]
            self.counters.hints_rewritten += 1
