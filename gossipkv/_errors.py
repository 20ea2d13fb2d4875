"""The exception hierarchy. Every error gossipkv raises on purpose derives from GossipKVError."""

from __future__ import annotations


class GossipKVError(Exception):
    """Base class of every error raised by gossipkv on purpose."""


class ConfigError(GossipKVError, ValueError):
    """A setting or argument is invalid; raised at call time, never later."""


class TransportError(GossipKVError):
    """A connection could not be made or was lost."""


class ConnectionClosed(TransportError):
    """The other end closed the connection (or it was closed locally)."""


class DecodeError(GossipKVError):
    """Bytes received from the network could not be turned into a valid message.

    ``reason`` is a short machine-readable tag used for the dropped-frame counters:
    ``too_large``, ``truncated``, ``bad_cbor``, ``too_deep``, ``bad_shape``, ``unknown_type``,
    ``bad_field``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class HandshakeError(GossipKVError):
    """The other end refused the ``hello`` (or we refused theirs): wrong cluster or protocol."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RemoteError(GossipKVError):
    """A peer answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class NodeClosedError(GossipKVError):
    """The node or client has been closed."""


class DataDirError(GossipKVError):
    """The data directory cannot be used (not a directory, unreadable, locked by another process)."""


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
