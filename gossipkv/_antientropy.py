"""Background anti-entropy: replicas of a partition compare Merkle trees and repair what differs.

Pattern: Anti-Entropy with Merkle trees kept current on every write (Dynamo §4.7, Riak's TicTac
AAE, :mod:`gossipkv._merkle`). Every ``anti_entropy_interval`` seconds (jittered) a peer takes
the next partition it owns (round robin, from a random start) and one other reachable owner of it
(the next one each sweep), and compares their trees top down: the root first (one small request:
replicas in sync cost exactly that), then the 64 branch hashes, then the segment hashes of the
branches that differ, then the keys and record hashes of the segments that differ. So k
differing keys cost at most k branch and k segment exchanges, whatever the partition holds, and
nothing is hashed or read from disk: the trees are in memory. For every key that differs or is
missing on one side (at most ``MAX_REPAIRS_PER_ROUND`` a round) this peer fetches the owner's
clock and stores it by ``sync``, then sends its own merged clock back (a ``ReplicaPut``, also a
``sync`` there): never an overwrite, never a new dot, so both replicas end with the same clock.
It repairs what reads never touch: keys written while a replica was cut off, or everything a
replica lost when it restarted empty.

The trees are built from the storage engine's record hashes (which the log engine recomputes
from the records on disk when it opens) once the partition count is known, and checked against
the records read back from the store every ``anti_entropy_rebuild_interval`` seconds: a tree
that disagrees (memory corruption, a bug) is logged, counted and replaced by the rebuilt one.

The replica side answers :class:`~gossipkv._messages.TreeRoot`,
:class:`~gossipkv._messages.TreeBranches`, :class:`~gossipkv._messages.TreeSegments` and
:class:`~gossipkv._messages.TreeKeys` from its trees; a request naming a partition out of range,
a partition count other than the table's, or branches or segments out of range, repeated, out
of order or too many, gets a typed ``bad_request``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import trio

from . import _dvv, _merkle
from ._dvv import DVVSet, Sibling
from ._errors import (
    ClusterNotReady,
    GossipKVError,
    InvalidArgument,
    RemoteError,
    TransportError,
    Unavailable,
)
from ._merkle import BRANCHES, SEGMENTS, SEGMENTS_PER_BRANCH, MerkleTrees, PartitionTree
from ._messages import (
    Message,
    TreeBranches,
    TreeHashes,
    TreeItems,
    TreeKeys,
    TreeRoot,
    TreeSegments,
)


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
    from ._replica_store import ReplicaStore

log = logging.getLogger("gossipkv.antientropy")

Clock = DVVSet[Sibling]
_Reply = TypeVar("_Reply", TreeHashes, TreeItems)

#: Segments one ``TreeKeys`` request may name (a replica refuses more with ``bad_request``).
MAX_SEGMENTS_PER_REQUEST = 64
#: Keys one ``TreeItems`` reply carries at most (with keys of at most 1 KiB, a reply stays far
#: below the frame limit); a segment with more keys is sent over several replies.
KEYS_PER_REPLY = 1024
#: Keys repaired (fetched and pushed back) per round at most; the rest wait for a later round.
MAX_REPAIRS_PER_ROUND = 128
#: ``TreeKeys`` requests one round makes at most (a bound against a misbehaving peer).
MAX_KEY_REQUESTS_PER_ROUND = 64
#: Buckets of record hashes added to the trees between checkpoints while they are built
#: (about 64/4096 of the keys: ~16k keys, a few tens of milliseconds, at 1M keys).
BUILD_BUCKETS_PER_STEP = 64


@dataclass(slots=True)
class AntiEntropyCounters:
    """What this peer's anti-entropy did (as :class:`~gossipkv.NodeStatistics` reports it).

    ``tree_roots_compared`` counts root comparisons (one per round in sync);
    ``branches_exchanged`` the branches whose segment hashes were fetched (their hashes
    differed); ``segments_exchanged`` the segments whose keys were fetched (their hashes
    differed): with k differing keys both are at most k per partition compared.
    ``trees_checked`` counts partition trees checked against the store by the scheduled rebuild,
    ``tree_mismatches`` those found wrong (and replaced).
    """

    rounds: int = 0
    partitions_compared: int = 0
    partitions_differing: int = 0
    keys_repaired: int = 0
    errors: int = 0
    tree_roots_compared: int = 0
    branches_exchanged: int = 0
    segments_exchanged: int = 0
    trees_checked: int = 0
    tree_mismatches: int = 0


def _strictly_ascending(ids: tuple[int, ...], limit: int, most: int, what: str) -> None:
    if not 1 <= len(ids) <= most:
        raise InvalidArgument(f"ask for 1..{most} {what}, not {len(ids)}")
    previous = -1
    for i in ids:
        if not previous < i < limit:
            raise InvalidArgument(
                f"{what} must be strictly ascending numbers in 0..{limit - 1}, got {list(ids)}",
            )
        previous = i


class AntiEntropy:
    """One peer's background anti-entropy (both sides: the one that asks and the one that answers).

    Args:
      service: this peer's data path (its storage, routing, replica calls and ``apply``).
      rng: randomness for the jitter, the starting partition and the choice of the other owner.
    """

    def __init__(self, service: ReplicaStore, rng: random.Random) -> None:
        self._kv = service
        self._rng = rng
        self._cursor: int | None = None
        self.counters = AntiEntropyCounters()

    # --- the trees -----------------------------------------------------------------------------

    async def trees(self, q: int) -> MerkleTrees:
        """This peer's trees for partition count ``q``, built first if needed (from the record
        hashes in memory, a checkpoint every :data:`BUILD_BUCKETS_PER_STEP` buckets)."""
        hashes = self._kv.storage.record_hashes
        while True:
            trees = hashes.trees
            if trees is None or trees.q != q:
                trees = hashes.attach(q)
            if trees.ready:
                return trees
            hashes.build_step(BUILD_BUCKETS_PER_STEP)
            await trio.lowlevel.checkpoint()

    async def check_trees(self) -> int:
        """Rebuild every partition tree from the records read back from the store and replace
        any live tree that disagrees (logged and counted in ``tree_mismatches``).

        Returns:
          The partitions whose trees were wrong.
        """
        table = self._kv.table()
        if table is None or not table.owners:
            return 0
        q = table.q
        trees = await self.trees(q)
        storage = self._kv.storage
        hashes = storage.record_hashes
        # One pass over the keys to group them by partition (a scan per partition would walk
        # every key once per partition).
        listed: dict[int, list[str]] = {p: [] for p in trees.partitions()}
        for segment in range(_merkle.SEGMENTS):
            for key in hashes.bucket(segment):
                listed.setdefault(_merkle.key_digest(key.encode("utf-8")) % q, []).append(key)
            if segment % BUILD_BUCKETS_PER_STEP == 0:
                await trio.lowlevel.checkpoint()
        wrong = 0
        for partition, keys in sorted(listed.items()):
            trees.begin_check(partition)
            fresh: dict[str, int] = {}
            try:
                async for key, data in storage.records(keys):
                    fresh[key] = _merkle.record_hash(key.encode("utf-8"), data)
            except BaseException:
                trees.abandon_check(partition)
                raise
            if hashes.trees is not trees:
                return wrong  # the trees were replaced meanwhile (another partition count)
            self.counters.trees_checked += 1
            if trees.finish_check(partition, fresh, hashes, listed=keys):
                wrong += 1
                self.counters.tree_mismatches += 1
                log.warning(
                    "the Merkle tree of partition %d disagreed with the store; replaced by "
                    "the rebuilt one",
                    partition,
                )
        return wrong

    # --- the asking side -----------------------------------------------------------------------

    async def run(self) -> None:
        """Compare one partition with another owner every interval, and check the trees every
        ``anti_entropy_rebuild_interval``, until cancelled (or return at once when
        ``anti_entropy_interval`` is 0)."""
        config = self._kv.config
        if config.anti_entropy_interval <= 0:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                run_jittered,
                config.anti_entropy_rebuild_interval,
                self._rng,
                self.check_trees,
                self._round_failed,
            )
            await run_jittered(
                config.anti_entropy_interval, self._rng, self.round, self._round_failed
            )

    def _round_failed(self, exc: GossipKVError) -> None:
        self.counters.errors += 1
        self._kv.count_error(exc)
        log.debug("anti-entropy round failed: %s", exc)

    async def round(self) -> None:
        """One round: the next owned partition against one other reachable owner of it.

        Raises:
          GossipKVError: the other owner failed or did not answer in time (nothing is lost:
            the keys repaired before the failure stay repaired).
        """
        table = self._kv.table()
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
        reachable = self._kv.reachable()
        others = [o for o in table.owners[partition] if o != me and o in reachable]
        if not others:
            return
        self.counters.rounds += 1
        # The other owner rotates with each sweep over the owned partitions, so within N-1
        # sweeps every pair of reachable owners of every partition has been compared.
        peer = others[(cursor // len(owned)) % len(others)]
        await self.compare(peer, partition, table.q)

    async def compare(self, peer: str, partition: int, q: int) -> int:
        """Compare ``partition`` with ``peer`` tree level by tree level and repair what differs,
        both ways.

        Returns:
          The keys exchanged (0 when the roots agree).

        Raises:
          GossipKVError: ``peer`` failed, did not answer in time, or answered nonsense.
        """
        trees = await self.trees(q)
        root = await self._hashes(peer, TreeRoot(partition, q), 1)
        self.counters.tree_roots_compared += 1
        self.counters.partitions_compared += 1
        if root[0] == trees.root(partition):
            return 0
        self.counters.partitions_differing += 1
        theirs = await self._hashes(peer, TreeBranches(partition, q), BRANCHES)
        mine = trees.tree(partition) or PartitionTree()
        branches = _merkle.differing(mine.branches, theirs)
        if not branches:
            return 0  # the root changed under us: the next round looks again
        segments: list[int] = []
        theirs = await self._hashes(
            peer, TreeSegments(partition, q, tuple(branches)), len(branches) * SEGMENTS_PER_BRANCH
        )
        self.counters.branches_exchanged += len(branches)
        mine = trees.tree(partition) or PartitionTree()
        for i, branch in enumerate(branches):
            got = theirs[i * SEGMENTS_PER_BRANCH : (i + 1) * SEGMENTS_PER_BRANCH]
            base = branch * SEGMENTS_PER_BRANCH
            segments.extend(base + s for s in _merkle.differing(mine.branch_segments(branch), got))
        differing = await self._differing_keys(peer, partition, q, segments)
        repaired = 0
        for key in differing[:MAX_REPAIRS_PER_ROUND]:
            try:
                await self._repair(peer, key)
            except GossipKVError as exc:
                if isinstance(exc, TransportError):
                    raise
                self.counters.errors += 1
                self._kv.count_error(exc)
                continue
            repaired += 1
            self.counters.keys_repaired += 1
        return repaired

    async def _differing_keys(
        self, peer: str, partition: int, q: int, segments: list[int]
    ) -> list[str]:
        """The keys of ``segments`` whose record hashes differ between here and ``peer`` (or that
        only one side holds), up to about :data:`MAX_REPAIRS_PER_ROUND`."""
        hashes = self._kv.storage.record_hashes
        out: list[str] = []
        seen: set[int] = set()
        pending = segments
        after = ""
        for _ in range(MAX_KEY_REQUESTS_PER_ROUND):
            if not pending or len(out) >= MAX_REPAIRS_PER_ROUND:
                break
            asked = tuple(pending[:MAX_SEGMENTS_PER_REQUEST])
            reply = await self._ask(peer, TreeKeys(partition, q, asked, after), TreeItems)
            try:
                got = _merkle.unpack(reply.hashes)
            except ValueError as exc:
                raise Unavailable(f"{peer} sent bad hashes: {exc}") from exc
            if len(got) != len(reply.keys) or not 0 <= reply.done <= len(asked):
                raise Unavailable(f"{peer} sent a malformed {reply.TAG}")
            if reply.done == 0 and not reply.keys:
                raise Unavailable(f"{peer} sent no progress on segment {asked[0]}")
            # Complete segments, plus the first one when only part of it came.
            answered = asked[: max(reply.done, 1)]
            theirs: dict[int, dict[str, int]] = {s: {} for s in answered}
            for key, h in zip(reply.keys, got, strict=True):
                digest = _merkle.key_digest(key.encode("utf-8"))
                there = theirs.get(_merkle.segment_of(digest))
                if digest % q != partition or there is None or key in there:
                    raise Unavailable(f"{peer} sent key {key!r} outside the segments asked")
                there[key] = h
            # When only part of the first segment came, its keys are compared up to the last
            # one sent (keys come sorted within a segment), and the next request resumes there.
            last = reply.keys[-1] if reply.done == 0 else ""
            for i, segment in enumerate(answered):
                since = after if i == 0 else ""
                upto = last if reply.done == 0 else None
                ours = {
                    k: h
                    for k, h in hashes.segment(partition, q, segment)
                    if k > since and (upto is None or k <= upto)
                }
                there = theirs[segment]
                out.extend(
                    sorted(k for k in ours.keys() | there.keys() if ours.get(k) != there.get(k))
                )
            seen.update(answered)
            pending = pending[reply.done :]
            after = last
        self.counters.segments_exchanged += len(seen)
        return out

    async def _repair(self, peer: str, key: str) -> None:
        """Fetch ``peer``'s clock of ``key`` and ``sync`` it here, then send ours back to it."""
        kv = self._kv
        theirs = await kv.read_replica(peer, key)
        if theirs is not None:
            await kv.apply(key, theirs)
        ours = await kv.storage.get(key)
        if ours is not None and (theirs is None or not _dvv.equal(ours, theirs)):
            await kv.write_replica(peer, key, ours, "")

    async def _hashes(self, peer: str, message: Message, count: int) -> list[int]:
        reply = await self._ask(peer, message, TreeHashes)
        try:
            got = _merkle.unpack(reply.hashes)
        except ValueError as exc:
            raise Unavailable(f"{peer} sent bad hashes: {exc}") from exc
        if len(got) != count:
            raise Unavailable(f"{peer} sent {len(got)} hashes for {message.TAG}, not {count}")
        return got

    async def _ask(self, peer: str, message: Message, expected: type[_Reply]) -> _Reply:
        with trio.move_on_after(self._kv.config.replica_timeout):
            reply = await self._kv.send(peer, message)
            if not isinstance(reply, expected):
                raise Unavailable(f"unexpected reply {reply.TAG} from {peer}")
            return reply
        raise TransportError(f"{peer} did not answer {message.TAG} in time")

    # --- the answering side --------------------------------------------------------------------

    async def handle(self, message: Message) -> TreeHashes | TreeItems:
        """Answer a request for one level of a partition's tree, or for keys of its segments.

        Raises:
          RemoteError: ``bad_request`` for a partition out of range, a partition count other
            than the table's, or branches or segments out of range, unordered or too many;
            ``unsupported`` for any other message.
          ClusterNotReady: no partition table yet.
        """
        if not isinstance(message, (TreeRoot, TreeBranches, TreeSegments, TreeKeys)):
            raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")
        table = self._kv.table()
        if table is None or not table.owners:
            raise ClusterNotReady("the cluster has no partition table yet; retry shortly")
        if message.q != table.q:
            raise InvalidArgument(f"q={message.q} but the table has {table.q}")
        if not 0 <= message.partition < table.q:
            raise InvalidArgument(f"partition {message.partition} is not in 0..{table.q - 1}")
        if isinstance(message, TreeSegments):
            _strictly_ascending(message.branches, BRANCHES, BRANCHES, "branches")
        elif isinstance(message, TreeKeys):
            _strictly_ascending(message.segments, SEGMENTS, MAX_SEGMENTS_PER_REQUEST, "segments")
        trees = await self.trees(table.q)
        if isinstance(message, TreeKeys):
            return self._keys(message)
        tree = trees.tree(message.partition) or PartitionTree()
        if isinstance(message, TreeRoot):
            return TreeHashes(_merkle.pack([tree.root]))
        if isinstance(message, TreeBranches):
            return TreeHashes(_merkle.pack(tree.branches))
        return TreeHashes(b"".join(_merkle.pack(tree.branch_segments(b)) for b in message.branches))

    def _keys(self, message: TreeKeys) -> TreeItems:
        hashes = self._kv.storage.record_hashes
        keys: list[str] = []
        values: list[int] = []
        done = 0
        for i, segment in enumerate(message.segments):
            items = sorted(hashes.segment(message.partition, message.q, segment))
            if i == 0 and message.after:
                items = [kv for kv in items if kv[0] > message.after]
            room = KEYS_PER_REPLY - len(keys)
            if len(items) > room:
                if i == 0:  # a segment larger than a reply: send what fits, the rest later
                    keys.extend(k for k, _ in items[:room])
                    values.extend(h for _, h in items[:room])
                break
            keys.extend(k for k, _ in items)
            values.extend(h for _, h in items)
            done += 1
        return TreeItems(keys=tuple(keys), hashes=_merkle.pack(values), done=done)
