"""Causal versioning of stored values: the DVVSet (Version Vector done right).

This module owns the per-key clock every replica stores: a dotted version vector set
(DVVSet, Gonçalves/Almeida et al., ``dvvset.erl``), its operations ``new``, ``sync``, ``join``,
``update``, ``event``, ``values`` and ``less``, the server-side actor naming that guarantees a dot
is never minted twice, the stable key -> partition hash, and the conversion to and from a
plain-data form (lists, ints, strs, values) that :func:`gossipkv._codec.dumps_canonical` encodes
canonically.

It implements the *Version Vector* pattern with one dot per value, so concurrent writes become
siblings instead of silent losses, and a write replaces exactly the values whose dots its context
saw.

Sans-IO core: stdlib only; never trio, cbor2, time or the global random.

Clock shape: ``entries`` is a tuple of :class:`Entry` sorted by actor; each entry
``(actor, n, vals)`` holds the values newest first, the value at index ``k`` carrying the dot
``(actor, n - k)``; events ``1 .. n - len(vals)`` of that actor are known but superseded.
``anonymous`` holds values without a dot: only :func:`new` puts one there (consumed at once by
:func:`update`); gossipkv never stores anonymous values (no server-side reconcile, pitfall P9),
and :func:`clock_from_plain` rejects them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from ._errors import InvalidClock, TooManySiblings

V = TypeVar("V")

#: A causal context as handed to clients: ``{actor: counter}`` (opaque to them).
Context = Mapping[str, int]

# Actor ids are "node_id/incarnation/epoch"; the separator never appears in the numeric parts.
_ACTOR_SEP = "/"

#: The largest event counter a clock may hold. Counters stay far below the 2**64 a CBOR integer
#: can carry without a bignum tag (which the wire and the stores refuse), so no clock a peer
#: accepts can ever be one it cannot encode and read back.
MAX_COUNTER = 2**63 - 1

#: How many nested arrays a stored clock wraps around each value:
#: ``[entries, anonymous] > entries > [actor, n, values] > values > [data, tombstone, meta]``.
CLOCK_NESTING = 5


@dataclass(frozen=True, slots=True)
class Entry(Generic[V]):
    """One actor's part of a DVVSet: its event counter and its live values, newest first."""

    actor: str
    counter: int
    values: tuple[V, ...] = ()


@dataclass(frozen=True, slots=True)
class DVVSet(Generic[V]):
    """A dotted version vector set: the causal history of one key plus its live values (siblings).

    Immutable; every operation returns a new clock. Build one with :func:`new` and :func:`update`.
    """

    entries: tuple[Entry[V], ...] = ()
    anonymous: tuple[V, ...] = ()


@dataclass(frozen=True, slots=True)
class Sibling:
    """One stored value of a key: client data or a tombstone, plus metadata.

    ``meta`` carries display and idempotency facts (an HLC stamp, a client request id); it never
    decides causality. A tombstone is an ordinary sibling whose ``data`` is ``None``: reads hide it
    but keep its context, so a later put can supersede the delete instead of siblinging with it.
    """

    data: object = None
    tombstone: bool = False
    meta: Mapping[str, object] = field(default_factory=dict)

    @classmethod
    def deleted(cls, meta: Mapping[str, object] | None = None) -> Sibling:
        """A tombstone sibling."""
        return cls(None, True, dict(meta or {}))


# --- the DVVSet operations (port of dvvset.erl) ----------------------------------------------


def new(context: Context | None, value: V) -> DVVSet[V]:
    """A client write: ``value`` with the ``context`` the client read (``None``: blind write).

    The result is only an argument for :func:`update`; it has no dot yet (clients never mint dots).
    """
    if not context:
        return DVVSet((), (value,))
    return DVVSet(tuple(Entry(a, n, ()) for a, n in sorted(context.items())), (value,))


def join(clock: DVVSet[V]) -> dict[str, int]:
    """The causal context of ``clock``: ``{actor: counter}`` (handed back on the next put)."""
    return {e.actor: e.counter for e in clock.entries}


def values(clock: DVVSet[V]) -> list[V]:
    """Every value of ``clock`` (siblings): anonymous ones, then each actor's, newest first."""
    out = list(clock.anonymous)
    for e in clock.entries:
        out.extend(e.values)
    return out


def less(x: DVVSet[V], y: DVVSet[V]) -> bool:
    """True if ``y``'s causal history strictly dominates ``x``'s (``join(y)`` > ``join(x)``)."""
    return _greater(y.entries, x.entries)


def _greater(a: tuple[Entry[V], ...], b: tuple[Entry[V], ...]) -> bool:
    # Walk both sorted entry lists (dvvset.erl greater/3): a must know all b knows, and more.
    i = j = 0
    strict = False
    while True:
        if j == len(b):
            return strict or i < len(a)
        if i == len(a):
            return False
        ea, eb = a[i], b[j]
        if ea.actor == eb.actor:
            if ea.counter < eb.counter:
                return False
            if ea.counter > eb.counter:
                strict = True
            i += 1
            j += 1
        elif ea.actor < eb.actor:
            strict = True
            i += 1
        else:
            return False


def sync(x: DVVSet[V], y: DVVSet[V]) -> DVVSet[V]:
    """Merge two clocks of the same key (the join of the semilattice).

    Commutative, associative and idempotent. A value survives unless the other side knows its dot
    without holding it (a write that saw it replaced it).
    """
    if less(x, y):
        anon = y.anonymous
    elif less(y, x):
        anon = x.anonymous
    else:
        merged: list[V] = []
        for v in (*x.anonymous, *y.anonymous):
            if v not in merged:
                merged.append(v)
        anon = tuple(merged)
    return DVVSet(_sync_entries(x.entries, y.entries), anon)


def sync_all(clocks: Iterable[DVVSet[V]]) -> DVVSet[V]:
    """Fold :func:`sync` over many clocks (an empty iterable gives the empty clock)."""
    out: DVVSet[V] = DVVSet()
    for c in clocks:
        out = sync(out, c)
    return out


def _sync_entries(a: tuple[Entry[V], ...], b: tuple[Entry[V], ...]) -> tuple[Entry[V], ...]:
    out: list[Entry[V]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        ea, eb = a[i], b[j]
        if ea.actor < eb.actor:
            out.append(ea)
            i += 1
        elif ea.actor > eb.actor:
            out.append(eb)
            j += 1
        else:
            out.append(_merge_entry(ea, eb))
            i += 1
            j += 1
    out.extend(a[i:])
    out.extend(b[j:])
    return tuple(out)


def _merge_entry(e1: Entry[V], e2: Entry[V]) -> Entry[V]:
    # The side with the higher counter wins the counter; its values survive only as far as the other
    # side did not see them superseded (dvvset.erl merge/5).
    if e1.counter < e2.counter:
        e1, e2 = e2, e1
    n1, l1, n2, l2 = e1.counter, e1.values, e2.counter, e2.values
    if n1 - len(l1) >= n2 - len(l2):
        return e1
    return Entry(e1.actor, n1, l1[: n1 - n2 + len(l2)])


def event(entries: tuple[Entry[V], ...], actor: str, value: V) -> tuple[Entry[V], ...]:
    """Mint the next dot of ``actor`` for ``value`` (only a coordinating replica calls this)."""
    out: list[Entry[V]] = []
    for i, e in enumerate(entries):
        if e.actor == actor:
            if e.counter >= MAX_COUNTER:
                raise InvalidClock(f"the event counter of {actor!r} is exhausted")
            out.append(Entry(actor, e.counter + 1, (value, *e.values)))
            out.extend(entries[i + 1 :])
            return tuple(out)
        if e.actor > actor:
            out.append(Entry(actor, 1, (value,)))
            out.extend(entries[i:])
            return tuple(out)
        out.append(e)
    out.append(Entry(actor, 1, (value,)))
    return tuple(out)


def update(client: DVVSet[V], local: DVVSet[V] | None, actor: str) -> DVVSet[V]:
    """Apply a client write ``client = new(ctx, v)`` at a replica whose stored clock is ``local``.

    Values whose dots ``ctx`` covers are discarded; every other local value survives as a sibling of
    ``v``, which gets the next dot of the server-side ``actor``.

    Raises:
      InvalidClock: if ``client`` is not the output of :func:`new` (exactly one anonymous value).
    """
    if len(client.anonymous) != 1:
        raise InvalidClock("update() takes a clock made by new(context, value)")
    value = client.anonymous[0]
    if local is None:
        return DVVSet(event(client.entries, actor, value), ())
    merged = sync(DVVSet(client.entries, ()), local)
    return DVVSet(event(merged.entries, actor, value), merged.anonymous)


def equal(x: DVVSet[V], y: DVVSet[V]) -> bool:
    """True if both clocks have the same causal history (same actors, counters and value counts)."""
    if x is y:
        return True
    if len(x.entries) != len(y.entries):
        return False
    for a, b in zip(x.entries, y.entries):  # noqa: B905 (lengths checked above)
        if a.counter != b.counter or a.actor != b.actor or len(a.values) != len(b.values):
            return False
    return True


def size(clock: DVVSet[V]) -> int:
    """Number of values (siblings) in ``clock``."""
    count = len(clock.anonymous)
    for e in clock.entries:  # a loop, not sum(generator): a frame less on the data path
        count += len(e.values)
    return count


# --- server-side actors ----------------------------------------------------------------------


def make_actor(node_id: str, incarnation: int, epoch: int) -> str:
    """The actor id ``node_id/incarnation/epoch``.

    ``incarnation`` must be fresh for every start of a replica (a random 64-bit number drawn
    when the storage is opened, so even a replica that lost its disk never reuses it); ``epoch``
    is a per-key actor epoch from :class:`ActorMint`.
    """
    if incarnation < 0 or epoch < 0:
        raise ValueError("incarnation and epoch must be non-negative")
    return f"{node_id}{_ACTOR_SEP}{incarnation:x}{_ACTOR_SEP}{epoch:x}"


class ActorMint:
    """Hands out the server-side actor a coordinating replica uses for one key.

    Per-key actor epochs (Riak's ``maybe_new_key_epoch``): when the key is locally not-found, start
    a new epoch, so a replica that lost a key (or its disk) can never mint a dot another replica
    already holds; when the local clock already carries one of this incarnation's actors, reuse it
    so clocks stay small.
    A local read *error* must never reach here as "not found" (pitfall P5).
    """

    def __init__(self, node_id: str, incarnation: int) -> None:
        if not node_id or _ACTOR_SEP in node_id:
            raise ValueError(f"node id must be non-empty and must not contain {_ACTOR_SEP!r}")
        self._prefix = f"{node_id}{_ACTOR_SEP}{incarnation:x}{_ACTOR_SEP}"
        self._node_id = node_id
        self._incarnation = incarnation
        self._next_epoch = 0

    def actor_for(self, local: DVVSet[V] | None) -> str:
        """The actor to pass to :func:`update` for a key whose stored clock is ``local``."""
        if local is not None:
            mine = [e.actor for e in local.entries if e.actor.startswith(self._prefix)]
            if mine:
                return max(mine, key=lambda a: int(a.rsplit(_ACTOR_SEP, 1)[1], 16))
        epoch = self._next_epoch
        self._next_epoch += 1
        return make_actor(self._node_id, self._incarnation, epoch)


# --- partitions --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)  # hot keys are routed on every request
def partition_of(key: str, partitions: int) -> int:
    """The Fixed Partition of ``key``: blake2b of its UTF-8 bytes modulo ``partitions`` (stable)."""
    if partitions <= 0:
        raise ValueError("partitions must be positive")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


# --- plain-data form ---------------------------------------------------------------------------


def sibling_to_plain(sibling: Sibling) -> list[object]:
    """``[data, tombstone, meta]``."""
    return [sibling.data, sibling.tombstone, dict(sibling.meta)]


def sibling_from_plain(raw: object) -> Sibling:
    """Inverse of :func:`sibling_to_plain`.

    Raises:
      InvalidClock: if ``raw`` does not have the sibling shape.
    """
    # Plain type checks, not ``match``: a sequence pattern costs microseconds (the Sequence ABC)
    # and this runs for every sibling of every clock received.
    if type(raw) is list and len(raw) == 3:
        data, tomb, meta = raw
        if type(tomb) is bool and type(meta) is dict and all(type(k) is str for k in meta):
            if tomb and data is not None:
                raise InvalidClock("a tombstone sibling carries no data")
            return Sibling(data, tomb, meta)
    raise InvalidClock("a sibling must be [data, tombstone: bool, meta: map]")


def clock_to_plain(clock: DVVSet[Sibling]) -> list[object]:
    """``[[[actor, counter, [sibling...]]...], [anonymous...]]``, ready for canonical CBOR."""
    return [
        [[e.actor, e.counter, [sibling_to_plain(s) for s in e.values]] for e in clock.entries],
        [sibling_to_plain(s) for s in clock.anonymous],
    ]


def clock_from_plain(raw: object, *, max_siblings: int | None = None) -> DVVSet[Sibling]:
    """Decode and validate a stored or received clock.

    Raises:
      InvalidClock: on any shape or invariant violation (unsorted or duplicate actors, counters
        below one, more values than events, anonymous values).
      TooManySiblings: if the clock holds more than ``max_siblings`` values.
    """
    if type(raw) is not list or len(raw) != 2:
        raise InvalidClock("a clock must be [entries, anonymous]")
    raw_entries, raw_anon = raw
    if type(raw_entries) is not list or type(raw_anon) is not list:
        raise InvalidClock("a clock must be [entries, anonymous]")
    if raw_anon:
        raise InvalidClock("stored clocks carry no anonymous values")
    entries: list[Entry[Sibling]] = []
    for item in raw_entries:
        if type(item) is not list or len(item) != 3:
            raise InvalidClock("a clock entry must be [actor, counter, values]")
        actor, n, vals = item
        if type(actor) is not str or type(n) is not int or type(vals) is not list:
            raise InvalidClock("a clock entry must be [actor, counter, values]")
        entries.append(Entry(actor, n, tuple([sibling_from_plain(v) for v in vals])))
    clock: DVVSet[Sibling] = DVVSet(tuple(entries), ())
    validate(clock, max_siblings=max_siblings)
    return clock


def validate(clock: DVVSet[V], *, max_siblings: int | None = None) -> None:
    """Check the DVVSet invariants.

    Raises:
      InvalidClock: if actors are empty, unsorted or repeated, a counter is below one or smaller
        than its number of values, or anonymous values are present.
      TooManySiblings: if there are more than ``max_siblings`` values.
    """
    if clock.anonymous:
        raise InvalidClock("stored clocks carry no anonymous values")
    prev: str | None = None
    count = 0  # the values, counted here rather than by size() (a call and a generator less)
    for e in clock.entries:
        if not isinstance(e.actor, str) or not e.actor:
            raise InvalidClock("actor ids must be non-empty strings")
        if prev is not None and e.actor <= prev:
            raise InvalidClock("clock entries must be sorted by actor without repeats")
        if (
            not isinstance(e.counter, int)
            or isinstance(e.counter, bool)
            or not 1 <= e.counter <= MAX_COUNTER
        ):
            raise InvalidClock(f"counter of {e.actor!r} must be an integer in 1..2**63-1")
        held = len(e.values)
        if held > e.counter:
            raise InvalidClock(f"actor {e.actor!r} holds more values than events")
        count += held
        prev = e.actor
    if max_siblings is not None and count > max_siblings:
        raise TooManySiblings(count, max_siblings)


def context_to_plain(context: Context) -> list[list[object]]:
    """A context as sorted ``[[actor, counter], ...]`` (equal contexts give equal bytes)."""
    return [[a, n] for a, n in sorted(context.items())]


def context_from_plain(raw: object) -> dict[str, int]:
    """Inverse of :func:`context_to_plain`.

    Raises:
      InvalidClock: if ``raw`` is not a list of ``[actor, counter >= 1]`` with distinct actors.
    """
    out: dict[str, int] = {}
    if not isinstance(raw, list):
        raise InvalidClock("a context must be a list of [actor, counter]")
    for item in raw:
        if type(item) is list and len(item) == 2:
            actor, n = item
            if type(actor) is str and actor and type(n) is int and 1 <= n <= MAX_COUNTER:
                if actor in out:
                    raise InvalidClock(f"actor {actor!r} repeated in context")
                out[actor] = n
                continue
        raise InvalidClock("a context entry must be [actor, counter in 1..2**63-1]")
    return out


# --- what a write may claim, and what a read may show -----------------------------------------


def clamp_context(context: Context | None, local: DVVSet[V] | None) -> dict[str, int] | None:
    """``context`` limited to what ``local`` knows: actors it does not hold are dropped and
    counters above its own are lowered to them.

    A context is a claim "I saw these dots"; a replica can only honour the dots it knows. A
    claim beyond them is either a forgery (a counter near 2**64, ten thousand made-up actors)
    or a read that saw writes this replica has not received yet; either way honouring it would
    let a write erase values nobody showed the writer. Clamped, the write only replaces values
    this replica holds and the writer was shown, and anything newer stays as a sibling: a stale
    claim costs a sibling, never a value.
    """
    if not context:
        return None
    known = {e.actor: e.counter for e in local.entries} if local is not None else {}
    out = {a: min(n, known[a]) for a, n in context.items() if a in known}
    return out or None


def context_within(context: Context | None, local: DVVSet[V] | None) -> bool:
    """True if every dot ``context`` claims is one ``local`` knows (clamping changes nothing)."""
    if not context:
        return True
    if local is None:
        return False
    known = {e.actor: e.counter for e in local.entries}
    return all(a in known and n <= known[a] for a, n in context.items())


def view(
    clock: DVVSet[V],
    max_values: int,
    max_bytes: int,
    cost: Callable[[V], int],
) -> tuple[DVVSet[V], int]:
    """The part of ``clock`` a read may return, and how many values it leaves out.

    Returns ``clock`` itself when it holds at most ``max_values`` values whose ``cost`` adds up
    to at most ``max_bytes``. Otherwise a sub-clock holding, for each actor, its *oldest*
    values, taken round-robin across actors until a limit is reached (at least one value is
    always kept), with each actor's counter lowered to its newest kept dot. Because a context
    ``{actor: n}`` covers exactly the dots ``1..n`` of that actor, ``join`` of the sub-clock
    covers exactly the values kept and none of those left out: a write with that context
    replaces what the reader was shown, and every value left out survives to the next read.
    Values whose ``cost`` is 0 (tombstones) never count against the limits.
    """
    total = count = 0
    for e in clock.entries:
        for v in e.values:
            c = cost(v)
            if c:
                count += 1
                total += c
            if count > max_values or total > max_bytes:
                return _oldest_first(clock, max_values, max_bytes, cost)
    return clock, 0


def _oldest_first(
    clock: DVVSet[V], max_values: int, max_bytes: int, cost: Callable[[V], int]
) -> tuple[DVVSet[V], int]:
    # Per actor, how many of its oldest values are kept (its values are stored newest first).
    kept = [0] * len(clock.entries)
    open_ = [i for i, e in enumerate(clock.entries) if e.values]
    count = total = 0
    while open_:
        still: list[int] = []
        for i in open_:
            e = clock.entries[i]
            v = e.values[len(e.values) - 1 - kept[i]]
            c = cost(v)
            if c and count and (count + 1 > max_values or total + c > max_bytes):
                continue  # this actor's prefix ends here
            count += 1 if c else 0
            total += c
            kept[i] += 1
            if kept[i] < len(e.values):
                still.append(i)
        open_ = still
    entries: list[Entry[V]] = []
    left_out = 0
    for e, k in zip(clock.entries, kept):  # noqa: B905 (same length by construction)
        dropped = len(e.values) - k
        left_out += sum(1 for v in e.values[:dropped] if cost(v))
        counter = e.counter - dropped
        if counter >= 1:
            entries.append(Entry(e.actor, counter, e.values[dropped:]))
    return DVVSet(tuple(entries), clock.anonymous), left_out
