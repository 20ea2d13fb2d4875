"""A client's data calls: reads, writes and deletes, and the two views anyone may ask for (the
membership table and the statistics snapshot). Each checks what it can before sending, so a bad
argument raises the same error as on a :class:`~gossipkv.Node`, and reads the answer into the
node's types; reads and writes are retried on another peer (writes carry an idempotency id)."""

from __future__ import annotations

from .._errors import DecodeError, ValueNotEncodable
from .._kv_model import GetResult, PutResult, check_request
from .._messages import KvGet, KvPut, MembersRequest, StatsRequest
from .._replication import check_count
from .._statistics import NodeStatistics, statistics_from_body
from ..membership._gossiper import MemberView
from ..storage._base import MAX_VALUE_DEPTH, check_plain
from ._connection import FailoverConnection
from ._replies import kv_result, member_views


class DataCalls:
    """:class:`~gossipkv.Client`'s data calls (one of its bases)."""

    _connection: FailoverConnection

    async def members(self) -> list[MemberView]:
        """The membership table of the peer we are connected to, as :meth:`gossipkv.Node.members`.

        Returns:
          One :class:`MemberView` per member that peer knows of, sorted by name: the row with
          ``is_self`` is the peer itself, the one with ``is_leader`` the leader it sees.

        Raises:
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          DecodeError: the peer's answer is not a membership table.
          NodeClosedError: the client is closed.
        """
        return member_views(await self._connection.request(MembersRequest(), retry=True))

    async def get(self, key: str, *, r: int = 0, local: bool = False) -> GetResult:
        """Read ``key`` through the connected peer (retried on another peer if it fails).

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          r: replies to wait for (default ``0``: the peer's ``KVConfig.r``); 1..N.
          local: read only the connected peer's own replica (not retried elsewhere).

        Returns:
          A :class:`GetResult`, as :meth:`gossipkv.Node.get`.

        Raises:
          ClusterNotReady: the cluster has no partition table yet (safe to retry).
          QuorumNotReached: fewer than R replicas answered.
          InvalidKey: ``key`` is not a non-empty string (:exc:`KeyTooLarge`: too long).
          StorageError: the peer's storage failed.
          InvalidArgument: ``r`` is not between 1 and N (as :meth:`gossipkv.Node.get`).
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          NodeClosedError: the client is closed.
        """
        check_request(key)
        check_count(r, "r")
        reply = kv_result(await self._connection.call(KvGet(key, r, local), retry=not local))
        return GetResult(reply.key, reply.found, list(reply.values), reply.context, reply.more)

    async def put(
        self, key: str, value: object, *, context: bytes | None = None, w: int = 0
    ) -> PutResult:
        """Write ``value`` (see :meth:`gossipkv.Node.put`).

        Each put carries this client's id and a sequence number, so a retry after a lost
        connection returns the first result instead of writing a second sibling.

        Args:
          key: a non-empty string of at most 1024 UTF-8 bytes.
          value: any CBOR-encodable value of at most 1 MiB encoded.
          context: the ``context`` of an earlier read or write of ``key``.
          w: replicas that must store it (default ``0``: the peer's ``KVConfig.w``); 1..N.

        Returns:
          A :class:`PutResult`, as :meth:`gossipkv.Node.put`.

        Raises:
          QuorumNotReached: fewer than W replicas stored it (it may still be stored on some).
          ClusterNotReady, Unavailable, TooManySiblings, ValueTooLarge, ValueTooDeep,
          RecordTooLarge, InvalidContext, InvalidKey, StorageError: as
            :meth:`gossipkv.Node.put`, reported by the peer.
          ValueNotEncodable: ``value`` is not plain CBOR data (checked before sending).
          InvalidArgument: ``w`` is not between 1 and N (as :meth:`gossipkv.Node.put`).
          TransportError: no listed peer answered.
          HandshakeError: the peer is in another cluster or speaks another protocol version.
          NodeClosedError: the client is closed.
        """
        # What no peer could accept is refused here, with the error a peer would give.
        check_request(key, context)
        check_count(w, "w")
        check_plain(value, MAX_VALUE_DEPTH)
        conn = self._connection
        msg = KvPut(key, value, context, w, conn.client_id, conn.next_seq())
        try:
            reply = kv_result(await self._connection.call(msg, retry=True))
        except DecodeError as exc:
            if exc.reason != "too_complex":
                raise
            # The frame would be refused by the peer: the value is what makes it so.
            raise ValueNotEncodable(f"value is too complex: {exc}") from None
        return PutResult(reply.key, list(reply.values), reply.context, reply.more)

    async def delete(self, key: str, *, context: bytes | None = None, w: int = 0) -> PutResult:
        """Delete ``key`` with a tombstone (see :meth:`gossipkv.Node.delete`).

        Args:
          key: the key to delete.
          context: the ``context`` of an earlier read, so the tombstone replaces what it saw.
          w: replicas that must store the tombstone (default ``0``: the peer's ``KVConfig.w``).

        Returns:
          A :class:`PutResult` with the live siblings still stored and the new context.

        Raises:
          QuorumNotReached, ClusterNotReady, Unavailable, InvalidContext, InvalidKey,
          StorageError, RemoteError, TransportError, HandshakeError, NodeClosedError: see
            :meth:`put`.
        """
        check_request(key, context)
        check_count(w, "w")
        conn = self._connection
        msg = KvPut(key, None, context, w, conn.client_id, conn.next_seq(), delete=True)
        reply = kv_result(await self._connection.call(msg, retry=True))
        return PutResult(reply.key, list(reply.values), reply.context, reply.more)

    async def statistics(self) -> NodeStatistics:
        """The statistics snapshot of the connected peer, as :meth:`gossipkv.Node.statistics`.

        Returns:
          A :class:`NodeStatistics` (fields a peer of an older version does not send take their
          defaults).

        Raises:
          DecodeError: the peer's answer is not a statistics snapshot.
          TransportError, HandshakeError, NodeClosedError: as :meth:`members`.
        """
        return statistics_from_body(await self._connection.request(StatsRequest(), retry=True))
