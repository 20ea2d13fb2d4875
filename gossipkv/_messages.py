"""Typed wire messages: every frame on a gossipkv connection is one of these.

Pure data (sans-IO): the codec (``_codec.py``) turns them into CBOR and validates what comes back,
using the field annotations below as the schema. A message travels inside an envelope
``[kind, request_id, type_tag, fields]`` so many requests can be in flight on one connection
(Request Pipeline): requests carry an id, responses echo it, one-way messages use id 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, is_dataclass
from typing import ClassVar, NamedTuple

PROTOCOL_VERSION = 7

#: The most replica requests one ``ReplicaBatch`` may carry (and answers its reply may hold).
MAX_BATCH_OPS = 64


class Kind(enum.IntEnum):
    """What an envelope is: a request, its response, an error response, or a one-way message."""

    REQUEST = 0
    RESPONSE = 1
    ERROR = 2
    ONEWAY = 3


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every wire message; ``TAG`` names it on the wire."""

    TAG: ClassVar[str] = ""


# --- handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """First frame on every connection, both directions."""

    TAG: ClassVar[str] = "hello"
    proto: int
    cluster: str
    node_id: str  # "client" for a client connection
    generation: int
    address: str  # the sender's advertised listen address ("" for clients)
    auth: bytes | None = None
    hlc: int = 0  # sender's hybrid logical clock (ms << 16 | counter), 0 if none


@dataclass(frozen=True, slots=True)
class Refused(Message):
    """Sent instead of a ``Hello`` reply when the handshake is refused; the connection then closes."""

    TAG: ClassVar[str] = "refused"
    reason: str  # "cluster" | "protocol" | "identity" | "shutting_down"
    message: str


@dataclass(frozen=True, slots=True)
class ErrorReply(Message):
    """The body of an ERROR envelope."""

    TAG: ClassVar[str] = "error"
    code: str
    message: str


# --- gossip (scuttlebutt) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DigestEntry:
    """What the sender knows of one member: incarnation, heartbeat, newest version."""

    node_id: str
    generation: int
    heartbeat: int
    max_version: int


@dataclass(frozen=True, slots=True)
class VersionedEntry:
    """One key of a member's namespace with the owner's version counter at its last write."""

    key: str
    value: object
    version: int


@dataclass(frozen=True, slots=True)
class NodeDelta:
    """Newer entries of one member's namespace: all its keys with ``version > floor``.

    ``max_version`` is the highest version covered by this delta (it may be below the owner's
    newest when the byte budget cut the delta short).
    """

    node_id: str
    generation: int
    heartbeat: int
    floor: int
    max_version: int
    entries: tuple[VersionedEntry, ...]


@dataclass(frozen=True, slots=True)
class Syn(Message):
    """Start of a gossip exchange (and a failure-detection probe): a summary of what the
    sender knows.

    ``view`` holds one hash per bucket of members (see ``membership._state.ViewSummary``);
    ``digest`` holds the sender's own entry.
    """

    TAG: ClassVar[str] = "syn"
    sender: str
    generation: int
    digest: tuple[DigestEntry, ...]
    hlc: int = 0
    view: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class SynAck(Message):
    """Reply to a Syn: the replier's entries for the buckets whose hashes differ (``buckets``
    names them, each listed whole) in ``digest``, and ``delta``, what the Syn's digest showed
    the sender lacks."""

    TAG: ClassVar[str] = "syn_ack"
    digest: tuple[DigestEntry, ...]
    delta: tuple[NodeDelta, ...]
    buckets: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack(Message):
    """What the replier lacks (``delta``), and what the sender lacks (``wanted``: its digest
    entries for the members the replier knows better; answered with one more Ack)."""

    TAG: ClassVar[str] = "ack"
    delta: tuple[NodeDelta, ...]
    wanted: tuple[DigestEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeRequest(Message):
    """Ask a member to probe ``target`` (another member, by name) for the sender, whose own
    probe of it went unanswered (SWIM's indirect probe); answered with a :class:`ProbeResult`."""

    TAG: ClassVar[str] = "probe"
    target: str


@dataclass(frozen=True, slots=True)
class ProbeResult(Message):
    """Whether ``target`` of a :class:`ProbeRequest` answered its prober."""

    TAG: ClassVar[str] = "probe_result"
    ok: bool


@dataclass(frozen=True, slots=True)
class Shutdown(Message):
    """Best-effort notice that a member is leaving now (one-way)."""

    TAG: ClassVar[str] = "shutdown"
    node_id: str
    generation: int


# --- operator / client requests --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MembersRequest(Message):
    TAG: ClassVar[str] = "members"


@dataclass(frozen=True, slots=True)
class StatsRequest(Message):
    TAG: ClassVar[str] = "stats"


@dataclass(frozen=True, slots=True)
class LeaveRequest(Message):
    """Decommission the peer: hand off its data, then leave. ``timeout`` bounds the hand-off
    (0: the peer's default); ``force`` leaves when it runs out, or when there is nowhere to
    hand the data to."""

    TAG: ClassVar[str] = "leave"
    timeout: float = 0.0
    force: bool = False


@dataclass(frozen=True, slots=True)
class RemoveRequest(Message):
    """An operator declares member ``name`` dead and has the leader remove it (forwarded to the
    leader by whichever peer receives it)."""

    TAG: ClassVar[str] = "remove"
    name: str


@dataclass(frozen=True, slots=True)
class ReplaceRequest(Message):
    """A new member (``gossipkv peer --replace``) asks the leader to hand it every partition of
    the dead member ``replaced`` (forwarded to the leader by whichever peer receives it)."""

    TAG: ClassVar[str] = "replace"
    replaced: str
    replacement: str
    generation: int


@dataclass(frozen=True, slots=True)
class RingRequest(Message):
    """The partition table as this peer holds it, and the partitions each member is still
    pulling (``gossipkv ring``)."""

    TAG: ClassVar[str] = "ring"


@dataclass(frozen=True, slots=True)
class OwnersRequest(Message):
    """Where ``key`` lives: its partition, its owners, and which of them hold it now
    (``gossipkv owners``)."""

    TAG: ClassVar[str] = "owners"
    key: str


@dataclass(frozen=True, slots=True)
class RepairRequest(Message):
    """Run anti-entropy of one partition this peer owns against every other reachable owner,
    now, until they agree (``gossipkv repair``)."""

    TAG: ClassVar[str] = "repair"
    partition: int


@dataclass(frozen=True, slots=True)
class SnapshotRequest(Message):
    """Hard-link a consistent copy of the peer's log engine under its data dir
    (``gossipkv snapshot``)."""

    TAG: ClassVar[str] = "snapshot"
    tag: str = ""


@dataclass(frozen=True, slots=True)
class ReloadTlsRequest(Message):
    """Read the peer's TLS certificate, key and CA bundle again (``gossipkv certs reload``)."""

    TAG: ClassVar[str] = "reload_tls"


@dataclass(frozen=True, slots=True)
class SetMetadataRequest(Message):
    TAG: ClassVar[str] = "set_metadata"
    key: str
    value: str | None


# --- operator's toolbox (issue 16) -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigRequest(Message):
    """The peer's effective configuration (``gossipkv config show``; operator role)."""

    TAG: ClassVar[str] = "config"


@dataclass(frozen=True, slots=True)
class LogLevelRequest(Message):
    """Set the level of the peer's ``gossipkv`` loggers now (``gossipkv log-level``; operator
    role): ``debug``, ``info``, ``warning``, ``error`` or ``critical``."""

    TAG: ClassVar[str] = "log_level"
    level: str


@dataclass(frozen=True, slots=True)
class PingRequest(Message):
    """Have the peer ask every member it knows for a small answer and report the round trips
    (``gossipkv ping``)."""

    TAG: ClassVar[str] = "ping"


@dataclass(frozen=True, slots=True)
class KeysRequest(Message):
    """One page of the live keys this peer's replica holds in ``partition``, in key order,
    after ``after`` and starting with ``prefix`` (``gossipkv keys``)."""

    TAG: ClassVar[str] = "keys"
    partition: int
    after: str = ""
    limit: int = 1000
    prefix: str = ""
    clocks: bool = False  # also each key's whole clock (``gossipkv backup``)


@dataclass(frozen=True, slots=True)
class RestoreRequest(Message):
    """Merge ``clock`` (a whole DVVSet, as replicas exchange it) into every owner of ``key``,
    as read repair does: siblings stay siblings, nothing newer is overwritten
    (``gossipkv restore``; operator role)."""

    TAG: ClassVar[str] = "restore"
    key: str
    clock: bytes


@dataclass(frozen=True, slots=True)
class MonitorRequest(Message):
    """Start a subscription on this connection to the peer's log records at ``level`` and up
    and its membership events, sent as one-way ``MonitorEvent`` messages (``gossipkv
    monitor``; operator role)."""

    TAG: ClassVar[str] = "monitor"
    level: str = "info"


@dataclass(frozen=True, slots=True)
class MonitorEvent(Message):
    """One log record or membership event: ``kind`` is ``log`` or ``event``."""

    TAG: ClassVar[str] = "monitor_event"
    kind: str
    level: str
    line: str


# --- key-value path ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KvGet(Message):
    """A client's (or a forwarding peer's) read."""

    TAG: ClassVar[str] = "kv_get"
    key: str
    r: int = 0  # 0: the node's default
    local: bool = False  # read only this peer's own replica (no quorum, no repair)


@dataclass(frozen=True, slots=True)
class KvPut(Message):
    """A client's write (or delete: a tombstone), possibly forwarded to a replica."""

    TAG: ClassVar[str] = "kv_put"
    key: str
    value: object
    context: bytes | None = None
    w: int = 0
    client_id: str = ""
    seq: int = 0
    delete: bool = False
    forwarded: bool = False


@dataclass(frozen=True, slots=True)
class KvResult(Message):
    """The answer to KvGet/KvPut: live siblings and the causal context covering exactly them."""

    TAG: ClassVar[str] = "kv_result"
    key: str
    found: bool
    values: tuple[object, ...]
    context: bytes
    more: int = 0  # siblings stored but not returned (the read limits); context covers values


@dataclass(frozen=True, slots=True)
class ReplicaGet(Message):
    TAG: ClassVar[str] = "replica_get"
    key: str


@dataclass(frozen=True, slots=True)
class ReplicaPut(Message):
    """Store ``clock`` by ``sync`` with the local one; ``hint_for`` names the owner a fallback
    stands in for (hinted handoff). ``clock`` is the canonical CBOR of the clock, as stored (an
    in-memory replica sends the bytes it keeps, without encoding the clock again)."""

    TAG: ClassVar[str] = "replica_put"
    key: str
    clock: bytes
    hint_for: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaState(Message):
    """A replica's clock for a key as canonical CBOR (``None``: not found)."""

    TAG: ClassVar[str] = "replica_state"
    clock: bytes | None = None


@dataclass(frozen=True, slots=True)
class ReplicaBatch(Message):
    """Several replica requests to one member in one frame (1..``MAX_BATCH_OPS``), answered by
    one :class:`ReplicaBatchReply`: what a coordinator had pending for that member in one turn
    of its event loop. Each op is handled as if it came alone; on the wire a ``ReplicaGet`` is
    ``[key]`` and a ``ReplicaPut`` ``[key, clock]`` or ``[key, clock, hint_for]``."""

    TAG: ClassVar[str] = "replica_batch"
    ops: tuple[ReplicaGet | ReplicaPut, ...]


@dataclass(frozen=True, slots=True)
class BatchError:
    """The error one op of a :class:`ReplicaBatch` met (what its own error reply would say).
    ``batch_full``: the reply had no room left for this op's clock; ask again on its own."""

    index: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ReplicaBatchReply(Message):
    """The answers to a :class:`ReplicaBatch`, in its order: each op's clock as a
    :class:`ReplicaState` would carry it (``None`` for a put, or a key not found), and the ops
    that failed (their ``clocks`` entry is ``None``)."""

    TAG: ClassVar[str] = "replica_batch_reply"
    clocks: tuple[bytes | None, ...]
    errors: tuple[BatchError, ...] = ()


# --- state watch ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WatchRequest(Message):
    """Start a subscription on this connection: the peer replies, then sends a ``WatchEvent``
    one-way message for every change its replica stores under ``prefix``, until the connection
    closes."""

    TAG: ClassVar[str] = "watch"
    prefix: str


@dataclass(frozen=True, slots=True)
class WatchEvent(Message):
    """One change stored at the sending replica: the live siblings and their context."""

    TAG: ClassVar[str] = "watch_event"
    key: str
    values: tuple[object, ...]
    context: bytes
    more: int = 0


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """A generic successful reply carrying a CBOR map (a snapshot rendered for the client)."""

    TAG: ClassVar[str] = "reply"
    body: dict[str, object] = field(default_factory=dict)


# --- anti-entropy ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeRoot(Message):
    """Ask a replica for the root hash of its Merkle tree of one partition; ``q`` is the asker's
    partition count (a replica whose table has another count refuses with ``bad_request``)."""

    TAG: ClassVar[str] = "tree_root"
    partition: int
    q: int


@dataclass(frozen=True, slots=True)
class TreeBranches(Message):
    """Ask a replica for the branch hashes of its tree of one partition (all of them)."""

    TAG: ClassVar[str] = "tree_branches"
    partition: int
    q: int


@dataclass(frozen=True, slots=True)
class TreeSegments(Message):
    """Ask a replica for the segment hashes of some ``branches`` of one partition's tree
    (strictly ascending branch numbers, at least one)."""

    TAG: ClassVar[str] = "tree_segments"
    partition: int
    q: int
    branches: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TreeHashes(Message):
    """The answer to ``TreeRoot``, ``TreeBranches`` or ``TreeSegments``: the hashes asked for,
    in order, as concatenated 8-byte big-endian words."""

    TAG: ClassVar[str] = "tree_hashes"
    hashes: bytes = b""


@dataclass(frozen=True, slots=True)
class TreeKeys(Message):
    """Ask a replica for the keys and record hashes of some ``segments`` of one partition
    (strictly ascending segment numbers, at least one, at most the replica's limit); ``after``
    resumes the first segment after that key."""

    TAG: ClassVar[str] = "tree_keys"
    partition: int
    q: int
    segments: tuple[int, ...] = ()
    after: str = ""


@dataclass(frozen=True, slots=True)
class TreeItems(Message):
    """The answer to ``TreeKeys``: ``keys`` (by segment in the order asked, sorted within one)
    with their record ``hashes`` (8 bytes each, concatenated); ``done`` leading segments are
    complete, and when ``done`` is less than asked, the keys of the next one stop early (ask
    again from ``done``, after the last key sent)."""

    TAG: ClassVar[str] = "tree_items"
    keys: tuple[str, ...] = ()
    hashes: bytes = b""
    done: int = 0


# --- transfers (partitions moving to their new owners) ----------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionFetch(Message):
    """A new (or remaining) owner pulls one partition from an owner it had before: the keys after
    ``after`` in sorted order with their clocks, at most ``limit`` (capped by the source's page
    size and a byte budget). ``done`` confirms everything pulled so far is stored: the source
    records the hand-off (a leaving member exits once all of its partitions are confirmed)."""

    TAG: ClassVar[str] = "partition_fetch"
    partition: int
    q: int
    after: str = ""
    limit: int = 0
    done: bool = False


@dataclass(frozen=True, slots=True)
class PartitionItems(Message):
    """A page of a partition: ``keys`` with their ``clocks`` (canonical CBOR, as stored),
    ``more`` when later keys remain, and ``total``, the keys the partition held when listed."""

    TAG: ClassVar[str] = "partition_items"
    keys: tuple[str, ...] = ()
    clocks: tuple[bytes, ...] = ()
    more: bool = False
    total: int = 0


# --- tombstone reaping ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TombstoneCheck(Message):
    """The coordinating owner of a partition asks another owner about tombstones it may reap:
    ``keys`` with the tombstone-only ``clocks`` (canonical CBOR) it holds for them. With ``reap``
    False the owner answers, per key, whether it holds that clock or one that dominates it; with
    ``reap`` True it forgets each key whose stored clock is exactly the one listed."""

    TAG: ClassVar[str] = "tombstone_check"
    partition: int
    q: int
    keys: tuple[str, ...] = ()
    clocks: tuple[bytes, ...] = ()
    reap: bool = False


@dataclass(frozen=True, slots=True)
class TombstoneState(Message):
    """The answer to ``TombstoneCheck``: one flag per key listed (held, or reaped)."""

    TAG: ClassVar[str] = "tombstone_state"
    flags: tuple[bool, ...] = ()


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TAG: cls
    for cls in (
        Hello,
        Refused,
        ErrorReply,
        Syn,
        SynAck,
        Ack,
        ProbeRequest,
        ProbeResult,
        Shutdown,
        MembersRequest,
        StatsRequest,
        LeaveRequest,
        RemoveRequest,
        ReplaceRequest,
        RingRequest,
        OwnersRequest,
        RepairRequest,
        SnapshotRequest,
        SetMetadataRequest,
        ReloadTlsRequest,
        ConfigRequest,
        LogLevelRequest,
        PingRequest,
        KeysRequest,
        RestoreRequest,
        MonitorRequest,
        MonitorEvent,
        Reply,
        KvGet,
        KvPut,
        KvResult,
        ReplicaGet,
        ReplicaPut,
        ReplicaState,
        ReplicaBatch,
        ReplicaBatchReply,
        WatchRequest,
        WatchEvent,
        TreeRoot,
        TreeBranches,
        TreeSegments,
        TreeHashes,
        TreeKeys,
        TreeItems,
        PartitionFetch,
        PartitionItems,
        TombstoneCheck,
        TombstoneState,
    )
}


class Envelope(NamedTuple):
    """One frame: a message plus how it relates to others on the connection (a named tuple:
    one is built for every frame received, and a tuple is the cheapest immutable record)."""

    kind: Kind
    request_id: int
    message: Message


def encoded_size(value: object) -> int:
    """Upper bound of the CBOR size of ``value`` as the codec would encode it.

    The sans-IO core uses it to keep deltas inside a byte budget without importing cbor2.
    Dataclasses are encoded as lists of their fields. It runs for every digest and delta, so
    the common types are tested first.
    """
    kind = type(value)
    if kind is int:
        n = value if value >= 0 else -1 - value  # type: ignore[operator]
        return _head_size(n)  # type: ignore[arg-type]
    if kind is str:
        n = len(value.encode("utf-8", "surrogatepass"))  # type: ignore[attr-defined]
        return _head_size(n) + n
    names = _FIELDS.get(kind)
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _FIELDS[kind] = tuple(f.name for f in fields(value))
    if names is not None:
        return _head_size(len(names)) + sum(encoded_size(getattr(value, n)) for n in names)
    if value is None or kind is bool:
        return 1
    if kind is float:
        return 9
    if isinstance(value, bytes):
        return _head_size(len(value)) + len(value)
    if isinstance(value, (list, tuple)):
        return _head_size(len(value)) + sum(encoded_size(item) for item in value)
    if isinstance(value, dict):
        return _head_size(len(value)) + sum(
            encoded_size(k) + encoded_size(v) for k, v in value.items()
        )
    if isinstance(value, int):
        return 9
    raise TypeError(f"cannot size {kind.__name__}")


_FIELDS: dict[type, tuple[str, ...]] = {}


def _head_size(n: int) -> int:
    if n < 24:
        return 1
    if n < 0x100:
        return 2
    if n < 0x10000:
        return 3
    if n < 0x100000000:
        return 5
    return 9
