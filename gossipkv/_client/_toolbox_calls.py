"""The operator's toolbox through a client: leave, removal, repair, snapshots, TLS reload,
metadata, configuration, log level, ping, key pages and restore, the ring and a key's owners.
Each is one request to the connected peer; only the ones safe to repeat are retried on another
peer. Under TLS most need an ``operator`` certificate."""

from __future__ import annotations

from .._errors import ConfigError, InvalidArgument
from .._messages import (
    ConfigRequest,
    KeysRequest,
    LeaveRequest,
    LogLevelRequest,
    OwnersRequest,
    PingRequest,
    ReloadTlsRequest,
    RemoveRequest,
    RepairRequest,
    RestoreRequest,
    RingRequest,
    SetMetadataRequest,
    SnapshotRequest,
)
from ._connection import FailoverConnection


class ToolboxCalls:
    """:class:`~gossipkv.Client`'s operator calls (one of its bases)."""

    _connection: FailoverConnection

    async def leave(
        self, *, handoff_seconds: float = 0.0, force: bool = False
    ) -> dict[str, object]:
        """Ask the connected peer to decommission itself (not retried elsewhere).

        The peer answers at once, then hands off its data and leaves as
        :meth:`gossipkv.Node.leave` does; its process (``gossipkv peer``) exits when the leave is
        done. Follow the hand-off in :meth:`statistics` (``leave``); it ends when the peer stops
        answering (done) or reports ``state == "failed"`` (it stays up).

        Args:
          handoff_seconds: how long the hand-off may take (0: the peer's default).
          force: leave when the time is up even if the hand-off is incomplete, or when no other
            member is in reach to hand the data to.

        Returns:
          ``{"ok": True, "status": "leaving"}`` (or the peer's status if it was already leaving
          or left).

        Raises:
          InvalidArgument: ``handoff_seconds`` is not a number or ``force`` not a bool (checked
            before sending); the peer's ``bad_request`` when no other member is in reach and
            ``force`` is off.
          TransportError: the connected peer did not answer.
          HandshakeError, NodeClosedError: as :meth:`members`.
        """
        if isinstance(handoff_seconds, bool) or not isinstance(handoff_seconds, int | float):
            raise InvalidArgument(f"handoff_seconds must be a number, got {_kind(handoff_seconds)}")
        if not isinstance(force, bool):
            raise InvalidArgument(f"force must be True or False, got {_kind(force)}")
        return await self._connection.request(LeaveRequest(handoff_seconds, force), retry=False)

    async def ring(self) -> dict[str, object]:
        """The connected peer's partition table (``gossipkv ring``).

        Returns:
          ``{"epoch", "partitions", "replicas", "owners", "pulling", "under_replicated"}``:
          ``owners[p]`` is partition ``p``'s preference list; ``pulling`` maps a partition (as
          text) to the members still pulling it (moves pending).

        Raises:
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(RingRequest(), retry=True)

    async def owners(self, key: str) -> dict[str, object]:
        """Where ``key`` lives (``gossipkv owners``): its partition, its owners, and which of
        them hold a live value now (asked now).

        Args:
          key: the key.

        Returns:
          ``{"key", "partition", "epoch", "owners": [{"name", "reachable", "pulling", "holds",
          "siblings"} (and "error" when an owner did not answer)]}``.

        Raises:
          InvalidKey: a bad key (:exc:`KeyTooLarge`: too long).
          ClusterNotReady: no table yet.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(OwnersRequest(key), retry=True)

    async def repair(self, partition: int) -> dict[str, object]:
        """Run anti-entropy of ``partition`` on the connected peer against every other
        reachable owner, now, until they agree (``gossipkv repair``). Not retried elsewhere.

        Args:
          partition: a partition the connected peer owns.

        Returns:
          ``{"partition", "compared", "keys_repaired", "unreachable"}``.

        Raises:
          RemoteError: ``bad_request`` for a partition out of range or not owned there.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(RepairRequest(partition), retry=False)

    async def snapshot(self, tag: str = "") -> dict[str, object]:
        """Have the connected peer hard-link a consistent copy of its log engine under its data
        dir (see :meth:`gossipkv.Node.snapshot`). Not retried on another peer.

        Args:
          tag: the snapshot's name; the current UTC time when empty.

        Returns:
          ``{"tag", "path", "files", "bytes", "keys"}``.

        Raises:
          InvalidArgument: a bad or taken tag, or a peer without a data dir.
          RemoteError: the copy failed on the peer (``storage``), or an operator certificate
            is needed (TLS).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        if not isinstance(tag, str):  # the peer could not even read it
            raise InvalidArgument(f"a snapshot tag must be a string, got {_kind(tag)}")
        return await self._connection.request(SnapshotRequest(tag), retry=False)

    async def remove(self, name: str) -> dict[str, object]:
        """Have the cluster remove member ``name``, declared dead (see
        :meth:`gossipkv.Node.remove`). Not retried on another peer.

        Args:
          name: the member to remove.

        Returns:
          ``{"removed", "generation", "leader", "minority"}``.

        Raises:
          RemoteError: refused (``bad_request``: unknown member, or reachable and up;
            ``unavailable``: no leader in reach).
          TransportError: the peer could not be reached.
          NodeClosedError: the client is closed.
        """
        if not isinstance(name, str):  # what a node answers; the peer could not even read it
            raise InvalidArgument(f"no member named {name!r}")
        return await self._connection.request(RemoveRequest(name), retry=False)

    async def reload_tls(self) -> None:
        """Have the connected peer read its TLS certificate, key and CA bundle again (not
        retried elsewhere); needs an ``operator`` certificate.

        Raises:
          ConfigError: the peer runs without TLS, or its files do not load (the ones in use
            stay in force), as :meth:`gossipkv.Node.reload_tls`.
          RemoteError: ``forbidden`` (not an operator certificate).
          TransportError: the connected peer did not answer.
        """
        try:
            await self._connection.request(ReloadTlsRequest(), retry=False)
        except InvalidArgument as exc:
            # The node's ConfigError, which travels as bad_request: the error a node raises.
            raise ConfigError(str(exc)) from None

    async def set_metadata(self, key: str, value: str | None) -> None:
        """Set a metadata key on the connected peer (not retried elsewhere).

        Args:
          key: 1..128 characters.
          value: a string (at most 512 UTF-8 bytes by default), or ``None`` to delete the key.

        Raises:
          InvalidArgument: the key or value is not a string (checked before sending), or the
            peer refused it (as :meth:`gossipkv.Node.set_metadata`).
          TransportError: the connected peer did not answer.
          HandshakeError, NodeClosedError: as :meth:`members`.
        """
        # What the peer could not even read is refused here, with the node's words.
        if not isinstance(key, str):
            raise InvalidArgument(
                "metadata key must be a non-empty string of at most 128 characters"
            )
        if value is not None and not isinstance(value, str):
            raise InvalidArgument("metadata value must be a string or None")
        await self._connection.request(SetMetadataRequest(key, value), retry=False)

    async def config(self) -> dict[str, object]:
        """The connected peer's effective configuration (``gossipkv config show``); needs an
        ``operator`` certificate under TLS.

        Returns:
          ``{"node", "gossip", "kv", "limits", "storage_limits"}`` (see
          :meth:`Node.effective_config`).

        Raises:
          RemoteError: ``forbidden`` (not an operator certificate).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(ConfigRequest(), retry=True)

    async def set_log_level(self, level: str) -> dict[str, object]:
        """Set the connected peer's ``gossipkv`` log level now (not retried elsewhere); needs an
        ``operator`` certificate under TLS.

        Args:
          level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.

        Returns:
          ``{"previous", "level"}``.

        Raises:
          RemoteError: ``bad_request`` for an unknown level; ``forbidden`` as above.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(LogLevelRequest(level), retry=False)

    async def ping(self) -> dict[str, object]:
        """Have the connected peer time a round trip to every member it knows.

        Returns:
          ``{"self", "members": [{"name", "address", "status", "reachable", "phi", "rtt_ms",
          "error"}, ...]}``: ``rtt_ms`` is ``None`` (and ``error`` says why) for a member that
          did not answer within the peer's request timeout.

        Raises:
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(PingRequest(), retry=True)

    async def keys_page(
        self,
        partition: int,
        *,
        after: str = "",
        limit: int = 1000,
        prefix: str = "",
        clocks: bool = False,
    ) -> dict[str, object]:
        """One page of the live keys the connected peer's replica holds in ``partition``.

        Args:
          partition: a partition this peer owns (others are simply empty here).
          after: the ``next`` of the previous page (``""``: from the start).
          limit: at most this many keys (1..1000).
          prefix: only keys starting with it.
          clocks: also each key's whole clock (opaque bytes for :meth:`restore`); such a page
            stops early at 4 MiB of clocks.

        Returns:
          ``{"partition", "keys", "next"}`` (and ``"clocks"``); ``next`` is ``None`` after the
          last page.

        Raises:
          RemoteError: ``bad_request`` (a partition out of range, a bad limit) or ``not_ready``
            (no partition table yet).
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(
            KeysRequest(partition, after, limit, prefix, clocks), retry=True
        )

    async def restore(self, key: str, clock: bytes) -> dict[str, object]:
        """Merge a clock saved by :meth:`keys_page` (``clocks=True``) into every owner of
        ``key``, as read repair does: siblings stay siblings and nothing newer is overwritten.
        Needs an ``operator`` certificate under TLS. Retrying is safe (a merge is idempotent).

        Args:
          key: the key.
          clock: its clock as saved.

        Returns:
          ``{"key", "acks", "owners"}``.

        Raises:
          RemoteError: ``invalid_clock`` or ``forbidden``.
          Unavailable, ClusterNotReady: no owner stored it.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return await self._connection.request(RestoreRequest(key, clock), retry=True)


def _kind(value: object) -> str:
    return type(value).__name__
