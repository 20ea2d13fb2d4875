"""Background anti-entropy: replicas of a partition compare digests and repair what differs.

Pattern: Anti-Entropy (Dynamo §4.7, Riak AAE), kept simple and bounded instead of a Merkle tree.
Every ``anti_entropy_interval`` seconds (jittered) a peer takes the next partition it owns (round
robin, from a random start) and one other reachable owner of it (the next one each sweep), and asks that owner for its digest of the partition:
a blake2b over the partition's sorted ``(key, hash of the canonical clock bytes)`` pairs. Equal
digests end the round. Otherwise the two exchange per-key hashes, a bounded page at a time, and for
every key that differs or is missing on one side (at most ``MAX_REPAIRS_PER_ROUND`` a round) this
peer fetches the owner's clock and stores it by ``sync``, then sends its own merged clock back
(a ``ReplicaPut``, also a ``sync`` there): never an overwrite, never a new dot, so both replicas
end with the same clock. It repairs what reads never touch: keys written while a replica was cut
off, or everything a replica lost when it restarted empty.

The replica side answers :class:`~gossipkv._messages.PartitionDigest` and
:class:`~gossipkv._messages.PartitionKeys` from a scan of the partition; a request naming a
partition out of range or a partition count other than the table's gets a typed ``bad_request``.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from . import _codec, _dvv
from ._dvv import DVVSet, Sibling
from ._errors import ClusterNotReady, GossipKVError, RemoteError, TransportError, Unavailable
from ._messages import Message, PartitionDigest, PartitionKeys, PartitionState


async def run_jittered(
    interval: float,
    rng: random.Random,
    work: Callable[[], Awaitable[object]],
    on_error: Callable[[GossipKVError], None],
) -> None:
    """Run ``work`` about every ``interval`` seconds until cancelled (jittered: the first wait
    is 0.5 to 1.5 intervals, later ones 0.75 to 1.25); its GossipKVErrors go to ``on_error``.
    An interval of 0 returns at once."""
    if interval <= 0:
        return
    next_at = trio.current_time() + interval * rng.uniform(0.5, 1.5)
    while True:
        await trio.sleep_until(next_at)
        next_at = trio.current_time() + interval * rng.uniform(0.75, 1.25)
        try:
            await work()
        except GossipKVError as exc:
            on_error(exc)


if TYPE_CHECKING:
    from ._kv import KeyValueService

log = logging.getLogger("gossipkv.antientropy")

Clock = DVVSet[Sibling]

#: Keys per ``PartitionKeys`` page: with keys of at most 1 KiB and 16-byte hashes a page stays
#: far below the frame limit, whatever the partition holds.
KEYS_PER_PAGE = 512
#: Keys repaired (fetched and pushed back) per round at most; the rest wait for a later round.
MAX_REPAIRS_PER_ROUND = 128
#: Pages one round reads at most from the other replica (a bound against a misbehaving peer).
MAX_PAGES_PER_ROUND = 256
#: A partition with more keys than this is hashed in a worker thread instead of on the loop.
THREAD_HASH_THRESHOLD = 4096

_HASH_BYTES = 16


@dataclass(slots=True)
class AntiEntropyCounters:
    """What this peer's anti-entropy did (as :class:`~gossipkv.NodeStatistics` reports it)."""

    rounds: int = 0
    partitions_compared: int = 0
    partitions_differing: int = 0
    keys_repaired: int = 0
    errors: int = 0


def clock_hash(data: bytes) -> bytes:
    """The per-key hash anti-entropy compares: blake2b of a clock's canonical CBOR."""
    return hashlib.blake2b(data, digest_size=_HASH_BYTES).digest()


def partition_digest(hashes: dict[str, bytes]) -> bytes:
    """The digest of one partition over its sorted ``(key, clock hash)`` pairs (``b""``: empty)."""
    if not hashes:
        return b""
    h = hashlib.blake2b(digest_size=_HASH_BYTES)
    for key in sorted(hashes):
        kb = key.encode("utf-8")
        h.update(len(kb).to_bytes(4, "big") + kb + hashes[key])
    return h.digest()


def _encode(clock: Clock) -> bytes:
    return _codec.dumps_canonical(_dvv.clock_to_plain(clock))


def _hash_all(items: list[tuple[str, Clock | bytes]]) -> dict[str, bytes]:
    return {k: clock_hash(v if isinstance(v, bytes) else _encode(v)) for k, v in items}


class AntiEntropy:
    """One peer's background anti-entropy (both sides: the one that asks and the one that answers).

    Args:
      service: this peer's data path (its storage, routing, replica calls and ``apply``).
      rng: randomness for the jitter, the starting partition and the choice of the other owner.
    """

    def __init__(self, service: KeyValueService, rng: random.Random) -> None:
        self._kv = service
        self._rng = rng
        self._cursor: int | None = None
        #: The listing being paged through: ``(partition, q, taken at, hashes, sorted keys)``. A first page
        #: takes a fresh one; later pages reuse it (one snapshot per listing, not one per page).
        self._listing: tuple[int, int, float, dict[str, bytes], list[str]] | None = None
        self.counters = AntiEntropyCounters()

    # --- the asking side -----------------------------------------------------------------------

    async def run(self) -> None:
        """Compare one partition with another owner every interval, until cancelled (or return
        at once when ``anti_entropy_interval`` is 0)."""
        await run_jittered(
            self._kv.config.anti_entropy_interval, self._rng, self.round, self._round_failed
        )

    def _round_failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        self._kv._count_error(exc)
        log.debug("anti-entropy round failed: %s", exc)

    async def round(self) -> None:
        """One round: the next owned partition against one other reachable owner of it.

        Raises:
          GossipKVError: the other owner failed or did not answer in time (nothing is lost:
            the keys repaired before the failure stay repaired).
        """
        table = self._kv._table()
        if table is None or not table.owners:
            return
        me = self._kv.node_id
        owned = [p for p, row in enumerate(table.owners) if me in row]
        if not owned:
            return
        if self._cursor is None:
            self._cursor = self._rng.randrange(len(owned) * table.n)
        cursor = self._cursor
        self._cursor += 1
        partition = owned[cursor % len(owned)]
        reachable = self._kv._reachable()
        others = [o for o in table.owners[partition] if o != me and o in reachable]
        if not others:
            return
        self.counters.rounds += 1
        # The other owner rotates with each sweep over the owned partitions, so within N-1
        # sweeps every pair of reachable owners of every partition has been compared.
        peer = others[(cursor // len(owned)) % len(others)]
        await self.compare(peer, partition, table.q)

    async def compare(self, peer: str, partition: int, q: int) -> int:
        """Compare ``partition`` with ``peer`` and repair what differs, both ways.

        Returns:
          The keys exchanged (0 when the digests agree).

        Raises:
          GossipKVError: ``peer`` failed or did not answer in time.
        """
        mine = await self.key_hashes(partition, q)
        reply = await self._ask(peer, PartitionDigest(partition, q))
        self.counters.partitions_compared += 1
        if reply.digest == partition_digest(mine):
            return 0
        self.counters.partitions_differing += 1
        differing: list[str] = []
        theirs_seen: set[str] = set()
        after = ""
        complete = False
        for _ in range(MAX_PAGES_PER_ROUND):
            page = await self._ask(peer, PartitionKeys(partition, q, after, KEYS_PER_PAGE))
            if len(page.keys) != len(page.hashes):
                raise Unavailable(
                    f"{peer} sent {len(page.keys)} keys but {len(page.hashes)} hashes"
                )
            for key, digest in zip(page.keys, page.hashes, strict=True):
                if key <= after or _dvv.partition_of(key, q) != partition:
                    raise Unavailable(f"{peer} sent key {key!r} out of order or partition")
                after = key
                theirs_seen.add(key)
                if mine.get(key) != digest:
                    differing.append(key)
            if not page.more:
                complete = True
                break
            if not page.keys or len(differing) >= MAX_REPAIRS_PER_ROUND:
                break
        # Keys only this peer holds: every one when the listing was complete, else those in the
        # range already listed.
        differing.extend(
            k for k in sorted(mine) if k not in theirs_seen and (complete or k <= after)
        )
        repaired = 0
        for key in differing[:MAX_REPAIRS_PER_ROUND]:
            try:
                await self._repair(peer, key)
            except GossipKVError as exc:
                if isinstance(exc, TransportError):
                    raise
                self.counters.errors += 1
                self._kv._count_error(exc)
                continue
            repaired += 1
            self.counters.keys_repaired += 1
        return repaired

    async def _repair(self, peer: str, key: str) -> None:
        """Fetch ``peer``'s clock of ``key`` and ``sync`` it here, then send ours back to it."""
        kv = self._kv
        theirs = await kv._replica_get(peer, key)
        if theirs is not None:
            await kv.apply(key, theirs)
        ours = await kv.storage.get(key)
        if ours is not None and (theirs is None or not _dvv.equal(ours, theirs)):
            await kv._replica_put(peer, key, ours, "")

    async def _ask(self, peer: str, message: Message) -> PartitionState:
        with trio.move_on_after(self._kv.config.replica_timeout):
            reply = await self._kv._send(peer, message)
            if not isinstance(reply, PartitionState):
                raise Unavailable(f"unexpected reply {reply.TAG} from {peer}")
            return reply
        raise TransportError(f"{peer} did not answer {message.TAG} in time")

    # --- the answering side --------------------------------------------------------------------

    async def handle(self, message: Message) -> PartitionState:
        """Answer a digest or a page of per-key hashes of one partition.

        Raises:
          RemoteError: ``bad_request`` for a partition out of range or a partition count other
            than the table's; ``unsupported`` for any other message.
          ClusterNotReady: no partition table yet.
        """
        if not isinstance(message, (PartitionDigest, PartitionKeys)):
            raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")
        table = self._kv._table()
        if table is None or not table.owners:
            raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
        if message.q != table.q:
            raise RemoteError("bad_request", f"q={message.q} but the table has {table.q}")
        if not 0 <= message.partition < table.q:
            raise RemoteError(
                "bad_request", f"partition {message.partition} is not in 0..{table.q - 1}"
            )
        if isinstance(message, PartitionDigest):
            hashes = await self.key_hashes(message.partition, table.q)
            return PartitionState(digest=partition_digest(hashes))
        hashes, keys = await self._listing_for(message.partition, table.q, fresh=not message.after)
        limit = min(message.limit, KEYS_PER_PAGE) if message.limit > 0 else KEYS_PER_PAGE
        start = bisect.bisect_right(keys, message.after)
        page = keys[start : start + limit]
        return PartitionState(
            keys=tuple(page), hashes=tuple(hashes[k] for k in page), more=start + limit < len(keys)
        )

    async def _listing_for(
        self, partition: int, q: int, *, fresh: bool
    ) -> tuple[dict[str, bytes], list[str]]:
        now = trio.current_time()
        held = self._listing
        max_age = self._kv.config.replica_timeout * MAX_PAGES_PER_ROUND
        if fresh or held is None or held[:2] != (partition, q) or now - held[2] > max_age:
            hashes = await self.key_hashes(partition, q)
            keys = sorted(hashes)
            self._listing = (partition, q, now, hashes, keys)
            return hashes, keys
        return held[3], held[4]

    async def key_hashes(self, partition: int, q: int) -> dict[str, bytes]:
        """Every key this replica holds in ``partition``, with the hash of its clock."""
        storage = self._kv.storage
        items: list[tuple[str, Clock | bytes]] = []
        async for key, clock in storage.scan(partition, q):
            if not clock.entries and not clock.anonymous:
                continue  # an empty clock holds nothing to repair
            found = storage.encoded_nowait(key) if storage.nowait else None
            items.append((key, found[1] if found is not None and found[0] is clock else clock))
        if len(items) > THREAD_HASH_THRESHOLD:
            return await trio.to_thread.run_sync(_hash_all, items)
        out: dict[str, bytes] = {}
        for i in range(0, len(items), 256):
            out.update(_hash_all(items[i : i + 256]))
            await trio.lowlevel.checkpoint()
        return out
