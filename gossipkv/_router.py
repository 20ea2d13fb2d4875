"""The request router: one table says, for every message a peer accepts, who may send it and
what answers it.

A route names its audience (anyone, an operator, or a member only) and up to three handlers: a
request handler (runs in a task and returns the reply), a ``nowait`` handler (runs in the
connection's reader and answers at once, defers, or returns ``None`` to take the task path), and
a one-way handler (gossip notices that get no reply). A message with no route is answered
``unsupported``; a one-way message with none is dropped and counted.

Every handler's :class:`~gossipkv.GossipKVError` leaves as a typed :class:`RemoteError`, here and
nowhere else, so a handler raises what it means and the wire code follows from the type.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from ._errors import GossipKVError, RemoteError, error_code
from ._messages import Message
from ._peer import Channel, Deferred

M = TypeVar("M", bound=Message)
Respond = Callable[[Message | BaseException], None]


class Audience(enum.Enum):
    """Who may send a message."""

    #: Clients and members alike: reads, writes, watches, statistics, membership.
    ANYONE = "anyone"
    #: Operator calls (leave, remove, repair, tags, TLS reload, ...): with TLS, a ``client``
    #: certificate may not make them; without TLS nothing tells an operator from a client.
    OPERATOR = "operator"
    #: Members only: gossip, replica traffic, transfers, anti-entropy. A connection whose hello
    #: (or certificate) says it is a client and sends one is closed and counted.
    MEMBER = "member"


@dataclass(frozen=True, slots=True)
class Route:
    """How one message type is handled (see the module docstring)."""

    who: Audience
    request: Callable[[Channel, Any], Awaitable[Message]] | None = None
    nowait: Callable[[Channel, Any, Respond], Message | Deferred | None] | None = None
    oneway: Callable[[Channel, Any], Awaitable[None]] | None = None


def route(
    kind: type[M],
    who: Audience,
    *,
    request: Callable[[Channel, M], Awaitable[Message]] | None = None,
    nowait: Callable[[Channel, M, Respond], Message | Deferred | None] | None = None,
    oneway: Callable[[Channel, M], Awaitable[None]] | None = None,
) -> tuple[type[Message], Route]:
    """One row of the table, with each handler type-checked against the message it gets."""
    return kind, Route(who, request, nowait, oneway)


class Router:
    """Dispatch by message type through one table.

    Args:
      routes: the table (see :func:`route`).
      gate: awaited before any request or one-way message is handled (the transport's pause,
        in tests that freeze a peer).
      dropped: where one-way messages nobody may send here are counted
        (``unexpected_oneway``).
    """

    def __init__(
        self,
        routes: Mapping[type[Message], Route],
        *,
        gate: Callable[[], Awaitable[None]],
        dropped: Counter[str],
    ) -> None:
        self._routes = dict(routes)
        self._gate = gate
        self._dropped = dropped
        self._member_only = frozenset(k for k, r in routes.items() if r.who is Audience.MEMBER)
        self._operator_only = frozenset(k for k, r in routes.items() if r.who is Audience.OPERATOR)

    @property
    def table(self) -> Mapping[type[Message], Route]:
        """The table it dispatches by (read-only)."""
        return MappingProxyType(self._routes)

    def refusal(self, remote_name: str, role: str | None) -> Callable[[Message], str | None] | None:
        """What a channel refuses from the other end: by its hello (``client``), and with TLS
        by its certificate's role. ``None``: a member, which may send anything."""
        if role == "client":
            return self._refuse_client
        if remote_name == "client":
            return self._refuse_member_messages
        return None

    def _refuse_member_messages(self, message: Message) -> str | None:
        return "member_message_from_client" if type(message) in self._member_only else None

    def _refuse_client(self, message: Message) -> str | None:
        kind = type(message)
        if kind in self._member_only:
            return "member_message_from_client"
        if kind in self._operator_only:
            return "operator_message_from_client"
        return None

    async def request(self, channel: Channel, message: Message) -> Message:
        """Answer a request in a task (the path every request may take)."""
        await self._gate()
        found = self._routes.get(type(message))
        if found is None or found.request is None:
            raise RemoteError("unsupported", f"unsupported request {message.TAG!r}")
        try:
            return await found.request(channel, message)
        except RemoteError:
            raise
        except GossipKVError as exc:
            raise RemoteError(error_code(exc), str(exc)) from exc

    def request_nowait(
        self, channel: Channel, message: Message, respond: Respond
    ) -> Message | Deferred | None:
        """Answer in the reader when the route can (see :class:`Route`); ``None``: take the
        task path."""
        found = self._routes.get(type(message))
        if found is None or found.nowait is None:
            return None
        try:
            return found.nowait(channel, message, respond)
        except RemoteError:
            raise
        except GossipKVError as exc:
            raise RemoteError(error_code(exc), str(exc)) from exc

    async def oneway(self, channel: Channel, message: Message) -> None:
        """Handle a one-way notice; one with no handler is dropped and counted."""
        await self._gate()
        found = self._routes.get(type(message))
        if found is None or found.oneway is None:
            self._dropped["unexpected_oneway"] += 1
            return
        if found.who is Audience.MEMBER and channel.remote.node_id == "client":
            # The channel refuses these already (see :meth:`refusal`): a second lock.
            self._dropped["unexpected_oneway"] += 1
            return
        await found.oneway(channel, message)
