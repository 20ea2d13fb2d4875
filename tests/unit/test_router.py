"""The request router: one table decides who may send a message and what answers it."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
import trio

import gossipkv
from gossipkv._errors import QuorumNotReached, RemoteError
from gossipkv._messages import (
    Ack,
    KvGet,
    LeaveRequest,
    Message,
    ReplicaPut,
    Reply,
    Shutdown,
    StatsRequest,
    Syn,
)
from gossipkv._router import Audience, Router, route


def channel(name: str) -> Any:
    return SimpleNamespace(remote=SimpleNamespace(node_id=name))


async def _open() -> None:
    pass


def make_router(**handlers: Any) -> tuple[Router, Counter[str], list[Message]]:
    seen: list[Message] = []
    dropped: Counter[str] = Counter()

    async def stats(ch: Any, message: StatsRequest) -> Message:
        seen.append(message)
        return Reply({"ok": True})

    async def get(ch: Any, message: KvGet) -> Message:
        raise QuorumNotReached(1, 2)

    async def ack(ch: Any, message: Ack) -> None:
        seen.append(message)

    table = dict(
        [
            route(StatsRequest, Audience.ANYONE, request=stats),
            route(KvGet, Audience.ANYONE, request=get),
            route(ReplicaPut, Audience.MEMBER, request=stats),  # type: ignore[arg-type]
            route(LeaveRequest, Audience.OPERATOR, request=stats),  # type: ignore[arg-type]
            route(Ack, Audience.MEMBER, oneway=ack),
        ]
    )
    return Router(table, gate=_open, dropped=dropped), dropped, seen


async def test_a_request_reaches_its_handler_and_an_unrouted_one_is_unsupported() -> None:
    router, _, seen = make_router()
    reply = await router.request(channel("a"), StatsRequest())
    assert isinstance(reply, Reply) and seen == [StatsRequest()]
    with pytest.raises(RemoteError) as info:
        await router.request(channel("a"), Syn("a", 1, ()))
    assert info.value.code == "unsupported"


async def test_a_handlers_typed_error_leaves_with_its_wire_code() -> None:
    router, _, _ = make_router()
    with pytest.raises(RemoteError) as info:
        await router.request(channel("client"), KvGet("k"))
    assert info.value.code == "quorum"


async def test_one_way_notices_without_a_route_or_from_a_client_are_dropped_and_counted() -> None:
    router, dropped, seen = make_router()
    await router.oneway(channel("b"), Ack(()))
    assert seen == [Ack(())]
    await router.oneway(channel("b"), Shutdown("b", 1))  # no route
    await router.oneway(channel("client"), Ack(()))  # members only
    assert dropped["unexpected_oneway"] == 2 and seen == [Ack(())]


def test_who_may_send_comes_from_the_table() -> None:
    router, _, _ = make_router()
    # A member (or a peer/operator certificate) may send anything.
    assert router.refusal("b", None) is None
    assert router.refusal("b", "peer") is None
    # A plaintext client: member messages are refused; operator calls cannot be told apart.
    plain = router.refusal("client", None)
    assert plain is not None
    assert plain(ReplicaPut("k", b"")) == "member_message_from_client"
    assert plain(Ack(())) == "member_message_from_client"
    assert plain(LeaveRequest()) is None and plain(StatsRequest()) is None
    # A client certificate: operator calls are refused too.
    tls = router.refusal("client", "client")
    assert tls is not None
    assert tls(LeaveRequest()) == "operator_message_from_client"
    assert tls(ReplicaPut("k", b"")) == "member_message_from_client"
    assert tls(StatsRequest()) is None


async def test_a_nodes_table_keeps_peer_traffic_to_members_and_operator_calls_to_operators(
    tmp_path: Any,
) -> None:
    # The node's own table: what issue 13 fixed must hold for every message type.
    node = gossipkv.Node(name="a", listen="127.0.0.1:0", data_dir=None)
    routes = node._rt.router.table
    member_only = {k.__name__ for k, r in routes.items() if r.who is Audience.MEMBER}
    operator = {k.__name__ for k, r in routes.items() if r.who is Audience.OPERATOR}
    assert member_only == {
        "Syn", "Ack", "ProbeRequest", "Shutdown", "ReplicaGet", "ReplicaPut", "ReplicaBatch",
        "PartitionFetch", "TombstoneCheck", "TreeRoot", "TreeBranches", "TreeSegments", "TreeKeys",
        "ReplaceRequest",
    }  # fmt: skip
    assert operator == {
        "LeaveRequest", "RemoveRequest", "RepairRequest", "SetMetadataRequest",
        "ReloadTlsRequest", "ConfigRequest", "LogLevelRequest", "MonitorRequest",
        "RestoreRequest", "SnapshotRequest",
    }  # fmt: skip
    # Every route answers something: a request, a nowait answer, or a one-way notice.
    assert all(r.request or r.oneway for r in routes.values())
    await trio.lowlevel.checkpoint()
