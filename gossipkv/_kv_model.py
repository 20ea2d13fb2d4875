"""What the data path hands back and carries: read and write results, changes, counters, and
the wire forms of clocks and client contexts.

The coordinator (:mod:`gossipkv._reads`, :mod:`gossipkv._writes`), the replica
(:mod:`gossipkv._replica`) and the API (:class:`~gossipkv.Node`, :class:`~gossipkv.Client`) share
these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import _codec, _dvv
from ._dvv import DVVSet, Sibling
from ._errors import DecodeError, InvalidClock, InvalidContext, InvalidKey
from ._histogram import LatencyHistogram
from ._messages import encoded_size
from .storage import DEFAULT_LIMITS, StorageLimits

Clock = DVVSet[Sibling]


@dataclass(frozen=True, slots=True)
class GetResult:
    """A read: the live siblings (tombstones hidden) and the context covering what was read.

    ``found`` is False when no live value exists; ``context`` is still meaningful then (a put with
    it supersedes the tombstone instead of siblinging with it).

    Attributes:
      key: the key read.
      found: whether any live value exists.
      values: the live siblings, more than one after concurrent writes; resolve them and write
        the result back with ``context``.
      context: opaque bytes (canonical CBOR of the causal context); ``b""`` when the key was
        never written.
      more: siblings stored but not returned, because the key holds more than a read returns
        (``StorageLimits.max_siblings`` values or ``max_record_bytes`` bytes). ``context``
        covers exactly ``values``: write their resolution with it and read again to see the
        rest. 0 almost always.
    """

    key: str
    found: bool
    values: list[object]
    context: bytes
    more: int = 0


@dataclass(frozen=True, slots=True)
class PutResult:
    """A write's outcome: the siblings now stored at the coordinating replica and their context.

    Attributes:
      key: the key written.
      values: the live siblings stored now: the written value, plus any concurrent ones its
        context did not cover (empty after a delete that covered them all).
      context: the context covering them, for the next write of ``key``.
      more: siblings stored but not returned (see :attr:`GetResult.more`).
    """

    key: str
    values: list[object]
    context: bytes
    more: int = 0


@dataclass(frozen=True, slots=True)
class Change:
    """A change this peer's replica stored for ``key`` (State Watch).

    Two replicas storing the same state report the same ``context``; :meth:`Client.watch` uses
    that to deliver each change once.

    Attributes:
      key: the key that changed.
      values: the live siblings now stored (tombstones hidden, so a delete shows as no values).
      context: the context covering them (as in :class:`GetResult`).
      more: siblings stored but not shown (see :attr:`GetResult.more`).
    """

    key: str
    values: list[object]
    context: bytes
    more: int = 0


def _cost(sibling: Sibling) -> int:
    """What a sibling costs a read: its value's encoded size (a tombstone costs nothing)."""
    return 0 if sibling.tombstone else max(1, encoded_size(sibling.data))


def visible(clock: Clock, limits: StorageLimits) -> tuple[list[object], bytes, int]:
    """What a read of ``clock`` returns: the live values, their exact context, and how many
    stored values it leaves out (at most ``max_siblings`` values and ``max_record_bytes`` bytes
    are shown; see :func:`gossipkv._dvv.view`)."""
    shown, more = _dvv.view(clock, limits.max_siblings, limits.max_record_bytes, _cost)
    return live_values(shown), encode_context(shown), more


def change_of(key: str, clock: Clock, limits: StorageLimits) -> Change:
    values, context, more = visible(clock, limits)
    return Change(key, values, context, more)


@dataclass(slots=True)
class KVCounters:
    gets: int = 0
    puts: int = 0
    deletes: int = 0
    forwarded: int = 0
    #: Puts checked and routed (each request once at each peer it reaches).
    put_plans: int = 0
    read_repairs: int = 0
    read_repairs_skipped: int = 0
    hints_stored: int = 0
    hints_delivered: int = 0
    hints_expired: int = 0
    idempotent_hits: int = 0
    siblings_seen: int = 0
    contexts_clamped: int = 0
    context_catch_ups: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    #: Latencies of coordinated reads and writes and of replica answers (issue 16).
    get_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    put_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    replica_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


def encode_context(clock: Clock) -> bytes:
    """The opaque context handed to clients: canonical CBOR of ``join(clock)``."""
    return _codec.dumps_canonical(_dvv.context_to_plain(_dvv.join(clock)))


def encode_wire_clock(clock: Clock) -> bytes:
    """A clock as it travels between replicas: canonical CBOR of its plain form."""
    return _codec.dumps_canonical(_dvv.clock_to_plain(clock))


def decode_context(
    raw: bytes | None, limits: StorageLimits = DEFAULT_LIMITS
) -> dict[str, int] | None:
    """The causal context a client sent, checked (its claims are clamped later, against the
    replica's clock: see :func:`gossipkv._dvv.clamp_context`).

    Raises:
      InvalidContext: larger than ``limits.max_context_bytes`` or not a gossipkv context.
    """
    if raw is None or raw == b"":
        return None
    if not isinstance(raw, bytes):
        raise InvalidContext(f"malformed context: bytes expected, got {type(raw).__name__}")
    if len(raw) > limits.max_context_bytes:
        raise InvalidContext(
            f"context of {len(raw)} bytes exceeds the {limits.max_context_bytes}-byte limit"
        )
    try:
        return _dvv.context_from_plain(_codec.loads_value(raw, max_depth=2))
    except (DecodeError, InvalidClock) as exc:
        raise InvalidContext(f"malformed context: {exc}") from exc


def check_request(key: object, context: object = None) -> None:
    """The type checks a :class:`~gossipkv.Client` makes before sending, with the errors a
    :class:`~gossipkv.Node` raises for the same call (the peer checks lengths and contents)."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"a key must be a non-empty string, got {type(key).__name__}")
    if context is not None and not isinstance(context, bytes):
        raise InvalidContext(f"malformed context: bytes expected, got {type(context).__name__}")


def live_values(clock: Clock) -> list[object]:
    """The client-visible siblings: tombstones hidden, retried writes (same request id) once."""
    out: list[object] = []
    seen_rids: set[str] = set()
    for sib in _dvv.values(clock):
        if sib.tombstone:
            continue
        rid = sib.meta.get("rid")
        if isinstance(rid, str) and rid:
            if rid in seen_rids:
                continue
            seen_rids.add(rid)
        out.append(sib.data)
    return out
