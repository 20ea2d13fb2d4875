"""The exception hierarchy. Every error gossipkv raises on purpose derives from GossipKVError."""

from __future__ import annotations


class GossipKVError(Exception):
    """Base class of every error raised by gossipkv on purpose."""


class ConfigError(GossipKVError, ValueError):
    """A setting or argument is invalid; raised at call time, never later."""


class TransportError(GossipKVError):
    """A connection could not be made or was lost."""


class ConnectionRefused(TransportError):
    """Nothing listens at the address: every connection attempt was refused at once (a
    crashed or stopped process; internal, callers catch :class:`TransportError`)."""


class ConnectionClosed(TransportError):
    """The other end closed the connection (or it was closed locally)."""


class DecodeError(GossipKVError):
    """Bytes received from the network could not be turned into a valid message.

    Attributes:
      reason: a short machine-readable tag, also the dropped-frame counter's key:
        ``too_large``, ``truncated``, ``bad_cbor``, ``too_deep``, ``too_complex`` (it would
        decode into more memory than the codec allows for its size), ``bad_shape``,
        ``unknown_type``, ``bad_field``, ``bad_batch`` (a replica batch of no or too many ops,
        or a reply that does not answer the batch it was sent for). A transport raises ``frame_timeout`` when a frame's
        body does not arrive in time (counted as a refusal, not a dropped frame).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HandshakeError(GossipKVError):
    """The other end refused the ``hello`` (or we refused theirs): wrong cluster or protocol.

    Attributes:
      reason: ``cluster`` (another cluster name), ``protocol`` (another ``PROTOCOL_VERSION``)
        or ``identity`` (a peer claimed our own name).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RemoteError(GossipKVError):
    """A peer answered a request with an error that has no typed counterpart here.

    Data-path errors come back as their own type (:exc:`QuorumNotReached`, ...); this one carries
    the rest.

    Attributes:
      code: the wire code, e.g. ``bad_request`` (the peer refused an argument) or ``internal``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgument(RemoteError, ValueError):
    """An argument is out of range or refers to nothing (``r`` or ``w`` outside 1..N, an unknown
    member, a metadata key that is too long): the same error from a :class:`~gossipkv.Node` as
    from a :class:`~gossipkv.Client` (whose peer reports it with the wire code ``bad_request``).

    Attributes:
      code: always ``bad_request``.
    """

    def __init__(self, message: str) -> None:
        super().__init__("bad_request", message)


class NodeClosedError(GossipKVError):
    """The node or client has been closed."""


class DataDirError(GossipKVError):
    """The data directory cannot be used (not a directory, unreadable, locked by another process)."""


# --- storage and versioning (issue 3) ----------------------------------------------------------


class InvalidClock(GossipKVError, ValueError):
    """A DVVSet clock or context fails validation (bad shape, unsorted actors, broken invariant)."""


class TooManySiblings(InvalidClock):
    """A put would store more siblings for one key than the configured limit (Riak: 100).

    Attributes:
      count: the siblings the put would have stored.
      limit: the limit.
    """

    def __init__(self, count: int, limit: int) -> None:
        super().__init__(f"too many siblings ({count} > {limit}); resolve them with a context put")
        self.count = count
        self.limit = limit


class InvalidKey(GossipKVError, ValueError):
    """A key is not a non-empty string that encodes to UTF-8."""


class KeyTooLarge(InvalidKey):
    """A key is longer than the configured limit in UTF-8 bytes."""


class ValueTooLarge(GossipKVError, ValueError):
    """A value is larger than the configured limit once encoded."""


class ValueTooDeep(ValueTooLarge):
    """A value nests arrays and maps deeper than the configured limit (default 32)."""


class RecordTooLarge(ValueTooLarge):
    """The write would make the key's stored state (every sibling with its causal history)
    larger than the per-key limit; resolve its siblings with a context put to make room."""


class ValueNotEncodable(GossipKVError, ValueError):
    """A value cannot be encoded as CBOR."""


class StorageError(GossipKVError):
    """Local storage failed (an I/O error); never reported as "not found"."""


class StorageCorrupt(StorageError):
    """A stored record failed its checksum or could not be decoded; it is never served."""


class StorageFull(StorageError):
    """The data dir's file system is full; the write was not stored and nothing stored was lost."""


class StorageClosed(StorageError):
    """The storage engine has been closed."""


# --- the replicated data path (issue 4) ----------------------------------------------------------


class ClusterNotReady(GossipKVError):
    """No partition table exists yet (the cluster has not formed); safe to retry."""


class Unavailable(GossipKVError):
    """No replica of the key can be reached right now."""


class InvalidContext(GossipKVError, ValueError):
    """A causal context was malformed or came from something other than a gossipkv read."""


class QuorumNotReached(GossipKVError):
    """Fewer replicas than required answered in time.

    For a put, the value may still be stored on the replicas that answered (as in Riak).

    Attributes:
      got: replicas that answered.
      needed: replicas required (R or W).
    """

    def __init__(self, got: int, needed: int, what: str = "replicas") -> None:
        super().__init__(f"quorum not reached: {got} of {needed} {what} answered")
        self.got = got
        self.needed = needed


_WIRE_CODES: dict[str, type[GossipKVError]] = {}


def _register_codes() -> None:
    _WIRE_CODES.update(
        {
            "quorum": QuorumNotReached,
            "not_ready": ClusterNotReady,
            "unavailable": Unavailable,
            "bad_request": InvalidArgument,
            "invalid_context": InvalidContext,
            "too_many_siblings": TooManySiblings,
            "value_too_large": ValueTooLarge,
            "value_too_deep": ValueTooDeep,
            "record_too_large": RecordTooLarge,
            "value_not_encodable": ValueNotEncodable,
            "key_too_large": KeyTooLarge,
            "invalid_key": InvalidKey,
            "invalid_clock": InvalidClock,
            "storage": StorageError,
        }
    )


def error_code(exc: GossipKVError) -> str:
    """The wire code for a data-path error (``error`` if it has none)."""
    if not _WIRE_CODES:
        _register_codes()
    if isinstance(exc, RemoteError):
        return exc.code
    if isinstance(exc, TransportError):
        # A peer that could not reach a replica reports it as a replica it cannot reach.
        return "unavailable"
    for code, cls in _WIRE_CODES.items():
        if type(exc) is cls:
            return code
    for code, cls in _WIRE_CODES.items():
        if isinstance(exc, cls):
            return code
    return "error"


def error_from_code(code: str, message: str) -> GossipKVError:
    """Rebuild the typed error a peer reported (unknown codes become :class:`RemoteError`)."""
    if not _WIRE_CODES:
        _register_codes()
    cls = _WIRE_CODES.get(code)
    if cls is QuorumNotReached:
        import re

        m = re.search(r"(\d+) of (\d+)", message)
        got, needed = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return QuorumNotReached(got, needed)
    if cls is TooManySiblings:
        import re

        m = re.search(r"\((\d+) > (\d+)\)", message)
        count, limit = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        return TooManySiblings(count, limit)
    if cls is None:
        return RemoteError(code, message)
    return cls(message)


def single_error(group: BaseExceptionGroup[BaseException]) -> GossipKVError | None:
    """The one gossipkv error inside ``group`` (ignoring cancellations), if that is all it holds.

    Nurseries wrap errors in exception groups; at the public edge one library error is re-raised
    ``from group`` so callers can ``except GossipKVError`` (trio's own advice for hidden nurseries).
    """
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        elif type(exc).__name__ != "Cancelled":
            leaves.append(exc)

    walk(group)
    if len(leaves) == 1 and isinstance(leaves[0], GossipKVError):
        return leaves[0]
    return None
