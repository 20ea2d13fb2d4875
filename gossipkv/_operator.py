"""The operator's calls that change a cluster or a peer: remove a dead member, hand a dead
member's partitions to its replacement, and snapshot a peer's data.

Remove and replace are leader decisions taken on the operator's word: a peer that does not lead
forwards them to the one that does, which decides (in the membership core), publishes the events
and persists the decision before it answers. A replacement asks for its own hand-over through
its seeds until a leader answers. The read-only views are :mod:`gossipkv._toolbox`'s.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ._errors import (
    ConfigError,
    DecodeError,
    HandshakeError,
    InvalidArgument,
    RemoteError,
    TransportError,
)
from ._kv import KeyValueService
from ._messages import Message, RemoveRequest, ReplaceRequest, Reply
from ._peer import Channel
from .membership._gossiper import Gossiper

log = logging.getLogger("gossipkv.node")

#: What ``gossipkv snapshot`` accepts as a tag (it names a folder under the data dir).
_SNAPSHOT_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class Operator:
    """The operator's calls (see the module docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      data_service: the data path, refused while this member checks its data.
      send_to_member: the connection pool's request to a member by name.
      channel_to: the connection pool's dial (a replacement reaches its seeds by address).
      wall: the wall clock in ms (decisions carry it; a snapshot's default tag).
      request_timeout: seconds; a replacement waits three of them for a seed.
      data_dir: where snapshots go (``None``: a memory-only peer, which has none).
      publish_events: hands the membership events a decision made to the subscribers.
      persist: saves the membership record (a decision is durable before it is answered).
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        data_service: Callable[[], KeyValueService],
        send_to_member: Callable[[str, Message], Awaitable[Message]],
        channel_to: Callable[[str], Awaitable[Channel]],
        wall: Callable[[], int],
        request_timeout: float,
        data_dir: str | os.PathLike[str] | None,
        publish_events: Callable[[], None],
        persist: Callable[[], Awaitable[None]],
    ) -> None:
        self._gossiper = gossiper
        self._data_service = data_service
        self._send_to_member = send_to_member
        self._channel_to = channel_to
        self._wall = wall
        self._request_timeout = request_timeout
        self._data_dir = data_dir
        self._publish_events = publish_events
        self._persist = persist

    async def remove(self, name: str) -> dict[str, object]:
        """Remove member ``name`` on the operator's word: here when this peer leads, else
        forwarded to the leader (see :meth:`Node.remove`)."""
        g = self._gossiper()
        leader = g.leader()
        if leader is None:
            raise RemoteError("unavailable", "no leader in reach to remove the member")
        if leader != g.node_id:
            reply = await self._send_to_member(leader, RemoveRequest(name))
            if not isinstance(reply, Reply):
                raise RemoteError("internal", f"unexpected reply {reply.TAG} from {leader}")
            return reply.body
        try:
            generation, minority = g.operator_remove(name, trio.current_time(), self._wall())
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        log.warning(
            "%s removed %s (generation %d) on the operator's word%s",
            g.node_id,
            name,
            generation,
            "; the survivors are a minority" if minority else "",
        )
        self._publish_events()
        await self._persist()
        return {
            "removed": name,
            "generation": generation,
            "leader": g.node_id,
            "minority": minority,
        }

    async def replace(self, request: ReplaceRequest) -> dict[str, object]:
        """Hand the partitions of ``request.replaced`` to ``request.replacement``: here when this
        peer leads, else forwarded to the leader."""
        g = self._gossiper()
        leader = g.leader()
        if leader is None:
            raise RemoteError("unavailable", "no leader in reach to hand over the partitions")
        if leader != g.node_id:
            reply = await self._send_to_member(leader, request)
            if not isinstance(reply, Reply):
                raise RemoteError("internal", f"unexpected reply {reply.TAG} from {leader}")
            return reply.body
        try:
            done = g.operator_replace(
                request.replaced,
                request.replacement,
                request.generation,
                trio.current_time(),
                self._wall(),
            )
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        if done:
            log.warning(
                "%s: %s replaces %s (its partitions, no others)",
                g.node_id,
                request.replacement,
                request.replaced,
            )
            self._publish_events()
            await self._persist()
        return {"replaced": request.replaced, "by": request.replacement, "leader": g.node_id}

    async def claim_replacement(self, replaced: str, seeds: list[str]) -> None:
        """Ask the cluster (through a seed, forwarded to its leader) to hand this new member the
        partitions of ``replaced``; a refusal ends the node with :exc:`ConfigError`."""
        g = self._gossiper()
        request = ReplaceRequest(replaced, g.node_id, g.generation)
        last_log = -math.inf
        while True:
            for addr in seeds:
                try:
                    with trio.fail_after(self._request_timeout * 3):
                        channel = await self._channel_to(addr)
                        reply = await channel.request(request)
                except RemoteError as exc:
                    if exc.code == "bad_request":
                        raise ConfigError(f"cannot replace {replaced}: {exc}") from None
                    continue  # no leader in reach there yet: try another seed, then again
                except (TransportError, HandshakeError, DecodeError, trio.TooSlowError):
                    continue
                if isinstance(reply, Reply):
                    log.info("%s takes over the partitions of %s", g.node_id, replaced)
                    return
            now = trio.current_time()
            if now - last_log >= 5.0:
                last_log = now
                log.warning(
                    "%s: still trying to reach the cluster to replace %s", g.node_id, replaced
                )
            await trio.sleep(1.0)

    async def snapshot(self, tag: str) -> dict[str, object]:
        """Hard-link this replica's data and hints into ``<data dir>/snapshots/<tag>/`` (see
        :meth:`Node.snapshot`)."""
        kv = self._data_service()
        name = self._gossiper().node_id
        if self._data_dir is None:
            raise InvalidArgument(
                f"{name} keeps its data in memory (no --data-dir): nothing to snapshot; "
                "use `gossipkv backup` for a dump of the cluster's keys"
            )
        if not tag:
            stamp = datetime.datetime.fromtimestamp(self._wall() / 1000, tz=datetime.UTC)
            tag = stamp.strftime("%Y%m%d-%H%M%S")
        if not _SNAPSHOT_TAG.fullmatch(tag):
            raise InvalidArgument(
                f"snapshot tag {tag[:80]!r}: use 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        root = Path(self._data_dir) / "snapshots" / tag
        if await trio.to_thread.run_sync(root.exists):
            raise InvalidArgument(f"snapshot {tag!r} exists already ({root})")
        files, size = await kv.storage.snapshot(root / "data")
        hint_files, hint_size = await kv.hints.snapshot(root / "hints")
        log.info("%s: snapshot %s: %d files, %d bytes", name, root, files, size)
        return {
            "tag": tag,
            "path": str(root),
            "files": files + hint_files,
            "bytes": size + hint_size,
            "keys": kv.storage.statistics().keys,
        }
