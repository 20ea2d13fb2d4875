"""A node's operator calls (issue 16): what ``gossipkv remove``, ``snapshot``, ``leave``,
``config show`` and ``certs reload`` ask of a :class:`~gossipkv.Node`, which inherits them."""

from __future__ import annotations

from ._errors import InvalidArgument
from ._node_runtime import NodeRuntime


class OperatorCalls:
    """The part of :class:`~gossipkv.Node`'s surface an operator uses; each call is carried out
    by the node's runtime."""

    _rt: NodeRuntime

    def effective_config(self) -> dict[str, object]:
        """The configuration this node runs with, as a plain map (``gossipkv config show``):
        ``node`` (name, addresses, seeds, data dir, fsync, TLS, log level), ``gossip``,
        ``kv``, ``limits`` and ``storage_limits``."""
        return self._rt.effective_config()

    async def remove(self, name: str) -> dict[str, object]:
        """Remove member ``name``, which the operator declares dead (``gossipkv remove``).

        The leader (this node, or the one it forwards to) removes the member's incarnation and
        publishes a partition table without it at once; its partitions go to the remaining
        members. This works even when the survivors are a minority: the operator's word stands
        in for the majority. Refused while the leader can reach the member.

        Args:
          name: the member to remove.

        Returns:
          ``{"removed", "generation", "leader", "minority"}``: what was removed, by which
          leader, and whether the survivors were short of a majority.

        Raises:
          RemoteError: refused (``bad_request``: unknown member, or it is reachable and up;
            ``unavailable``: no leader in reach).
          NodeClosedError: the node is not running.
        """
        return await self._rt.operator.remove(name)

    async def snapshot(self, tag: str = "") -> dict[str, object]:
        """Hard-link a consistent copy of this node's log engine into
        ``<data dir>/snapshots/<tag>/`` (``gossipkv snapshot``, like ``nodetool snapshot``).

        The copy holds every write this replica acknowledged before the call (the active
        segment is sealed first) and opens as a data dir of its own: to restore it, stop the
        node and put its ``data`` and ``hints`` folders in place of the node's (see the README).
        It costs no disk space until compaction deletes the originals. Hints are copied just
        after the data, so a write between the two may be in one copy only.

        Args:
          tag: the snapshot's name (letters, digits, ``.``, ``_``, ``-``; at most 64); the
            current UTC time (``20261129-001500``) when empty.

        Returns:
          ``{"tag", "path", "files", "bytes", "keys"}``.

        Raises:
          InvalidArgument: a bad or taken tag, or a node with no data dir (use ``gossipkv
            backup`` for a dump of the cluster's keys instead).
          StorageError: the copy failed (it leaves nothing behind).
          NodeClosedError: the node is not running.
        """
        if not isinstance(tag, str):
            raise InvalidArgument(f"a snapshot tag must be a string, got {type(tag).__name__}")
        return await self._rt.operator.snapshot(tag)

    async def leave(
        self, *, handoff_seconds: float | None = None, force: bool = False
    ) -> dict[str, object]:
        """Decommission this node: hand off its data, leave the cluster gracefully, and stop.

        Announces ``leaving``; the leader publishes a partition table without this node; every
        current owner of each partition this node held pulls it from this node (a transfer) and
        confirms, and this node's hinted writes go to their keys' current owners. Only then does
        it announce ``left``, gossip it for two more rounds, tell the live peers and end
        :meth:`run`: when it returns, no key this node held has fewer than N copies (unless a
        receiving owner is down). Other members show it ``left``; the leader removes it after
        ``remove_after``. A call while a leave is under way waits for it.

        Args:
          handoff_seconds: how long the hand-off may take (default:
            ``GossipConfig.handoff_timeout``): a protocol deadline, not a cancellation: when it
            passes the node stays up (or, with ``force``, leaves).
          force: leave when the time is up even if the hand-off is incomplete, or when no
            other member is in reach to hand the data to (what only this node held may be lost).

        Returns:
          ``{"ok": True, "status": "left"}``, as :meth:`Client.leave` answers (with the status
          the peer had when asked).

        Raises:
          InvalidArgument: ``handoff_seconds`` is not a number or ``force`` not a bool; or no
            other member is in reach to hand the data to and ``force`` is off (checked before
            anything is announced).
          Unavailable: the hand-off did not finish in time (and ``force`` was not given): the
            node stays up, ``leaving`` and still serving as a source; calling ``leave`` again
            waits again.
          NodeClosedError: the node is not running.
        """
        if handoff_seconds is not None and (
            isinstance(handoff_seconds, bool) or not isinstance(handoff_seconds, int | float)
        ):
            raise InvalidArgument(
                f"handoff_seconds must be a number, got {type(handoff_seconds).__name__}"
            )
        if not isinstance(force, bool):
            raise InvalidArgument(f"force must be True or False, got {type(force).__name__}")
        decommission = self._rt.decommission
        decommission.check_leave(force)
        await decommission.leave(handoff_seconds, force)
        return {"ok": True, "status": "left"}

    def reload_tls(self) -> None:
        """Read the TLS certificate, key and CA bundle again (SIGHUP, ``gossipkv certs reload``).

        Connections opened from now on use them; open ones keep the ones they started with, so
        rotating a CA (a bundle of old and new in ``ca.pem``, then new certificates, then the new
        CA alone) drops no request.

        Raises:
          ConfigError: this node runs without TLS, or the files do not load (the ones in use
            stay in force).
        """
        self._rt.reload_tls()
