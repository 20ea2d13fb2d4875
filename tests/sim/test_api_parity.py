"""One API for Node and Client (issue 14 §3): the same call, with the same bad input, raises the
same exception type with the same message (up to its first colon), and the same good call returns
the same types, whether it goes through an embedded :class:`Node` or a :class:`Client` of one.

Every operation both have is here: ``get``, ``put``, ``delete``, ``members``, ``statistics``,
``set_metadata``, ``remove``, ``snapshot``, ``reload_tls``, ``watch`` and ``leave`` (and the
client's ``config``, the node's ``effective_config``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import trio
import trio.testing

from gossipkv import (
    Change,
    DecodeError,
    GetResult,
    MemberView,
    Node,
    NodeStatistics,
    PutResult,
    open_client,
)
from gossipkv.testing import open_sim_cluster

Call = Callable[[Any], Awaitable[Any] | Any]

BAD: dict[str, Call] = {
    "get: empty key": lambda api: api.get(""),
    "get: key not a string": lambda api: api.get(123),
    "get: key too long": lambda api: api.get("x" * 2000),
    "get: r above N": lambda api: api.get("k", r=9),
    "get: r negative": lambda api: api.get("k", r=-1),
    "get: r not an int": lambda api: api.get("k", r="2"),
    "put: value not CBOR": lambda api: api.put("k", object()),
    "put: a set": lambda api: api.put("k", {1, 2}),
    "put: too complex to decode": lambda api: api.put("k", [{}] * 100_000),
    "put: value too large": lambda api: api.put("k", b"x" * (2 << 20)),
    "put: value too deep": lambda api: api.put("k", eval("[" * 40 + "]" * 40)),
    "put: w above N": lambda api: api.put("k", "v", w=9),
    "put: w negative": lambda api: api.put("k", "v", w=-1),
    "put: context garbage": lambda api: api.put("k", "v", context=b"garbage"),
    "put: context not bytes": lambda api: api.put("k", "v", context="abc"),
    "put: empty key": lambda api: api.put("", "v"),
    "put: key not a string": lambda api: api.put(None, "v"),
    "put: w a bool": lambda api: api.put("k", "v", w=True),
    "put: map with a bytes key": lambda api: api.put("k", {b"x": 1}),
    "get: key bytes": lambda api: api.get(b"k"),
    "delete: context garbage": lambda api: api.delete("k", context=b"\xff"),
    "delete: w above N": lambda api: api.delete("k", w=4),
    "delete: w not an int": lambda api: api.delete("k", w="1"),
    "delete: context not bytes": lambda api: api.delete("k", context="abc"),
    "delete: empty key": lambda api: api.delete(""),
    "remove: unknown member": lambda api: api.remove("nosuch"),
    "remove: itself": lambda api: api.remove("n1"),
    "remove: name not a string": lambda api: api.remove(5),
    "set_metadata: empty key": lambda api: api.set_metadata("", "v"),
    "set_metadata: value too large": lambda api: api.set_metadata("k", "v" * 100_000),
    "set_metadata: key not a string": lambda api: api.set_metadata(5, "v"),
    "set_metadata: value not a string": lambda api: api.set_metadata("k", 5),
    "snapshot: no data dir": lambda api: api.snapshot("t1"),
    "reload_tls: no TLS": lambda api: api.reload_tls(),
    "watch: max_buffer negative": lambda api: api.watch("k", max_buffer=-1),
    "watch: prefix not a string": lambda api: api.watch(5),
    "snapshot: tag not a string": lambda api: api.snapshot(5),
    "leave: handoff_seconds not a number": lambda api: api.leave(handoff_seconds="x"),
    "leave: force not a bool": lambda api: api.leave(force="yes"),
}


async def _outcome(api: Any, call: Call) -> tuple[str, str]:
    try:
        result = call(api)
        if isinstance(result, Awaitable):
            result = await result
        if isinstance(result, AbstractAsyncContextManager):  # watch: what entering gives
            async with result as entered:
                result = entered
    except Exception as exc:  # the point: whatever it raises, compared across both
        # The message up to its first colon: sizes inside it may differ (a client counts a frame).
        return type(exc).__name__, str(exc).split(":")[0]
    return "returned", type(result).__name__


@pytest.fixture
async def both(autojump_clock: trio.testing.MockClock) -> Any:
    async with open_sim_cluster(3, seed=1) as c:
        with trio.fail_after(30):
            await c.wait_until(lambda: all(n.statistics().table_epoch for n in c.nodes.values()))
        transport = c.net.transport("client:7400")
        async with open_client(["n1:7400"], transport=transport) as client:
            yield c.nodes["n1"], client


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_raises_the_same_error_from_a_node_and_a_client(
    both: tuple[Node, Any], case: str
) -> None:
    node, client = both
    on_node = await _outcome(node, BAD[case])
    on_client = await _outcome(client, BAD[case])
    assert on_node[0] != "returned", f"{case}: the node accepted it"
    assert on_node == on_client, f"{case}: node {on_node} but client {on_client}"


async def test_the_data_operations_return_the_same_types(both: tuple[Node, Any]) -> None:
    node, client = both
    for api, key in ((node, "a"), (client, "b")):
        put = await api.put(key, "v1")
        assert type(put) is PutResult and put.values == ["v1"]
        got = await api.get(key)
        assert type(got) is GetResult and got.values == ["v1"] and got.found
        again = await api.put(key, "v2", context=got.context)
        assert type(again) is PutResult and again.values == ["v2"]
        gone = await api.delete(key, context=again.context)
        assert type(gone) is PutResult and gone.values == []
        assert (await api.get(key)).found is False
        local = await api.get(key, local=True)  # n1 holds a replica of every key (N = 3)
        assert type(local) is GetResult and local.found is False


async def test_the_operator_calls_return_the_same_types(both: tuple[Node, Any]) -> None:
    node, client = both
    assert await _outcome(node, lambda api: api.set_metadata("role", "a")) == (
        "returned",
        "NoneType",
    )
    assert await _outcome(client, lambda api: api.set_metadata("zone", "b")) == (
        "returned",
        "NoneType",
    )
    [me] = [m for m in await client.members() if m.is_self]
    assert me.metadata == {"role": "a", "zone": "b"}
    # The client's ``config`` is the node's ``effective_config``, through the wire.
    assert await client.config() == node.effective_config()


async def test_watch_yields_the_same_changes(both: tuple[Node, Any]) -> None:
    node, client = both
    async with node.watch("w:") as on_node, client.watch("w:") as on_client:
        put = await node.put("w:1", "v")
        with trio.fail_after(10):
            seen = [await on_node.receive(), await on_client.receive()]
    assert all(type(c) is Change for c in seen)
    assert [(c.key, c.values, c.context) for c in seen] == [("w:1", ["v"], put.context)] * 2


async def test_remove_returns_the_same_shape(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(5, seed=3) as c:
        node = c.nodes["n1"]
        with trio.fail_after(60):
            await c.wait_until(lambda: all(n.statistics().table_epoch for n in c.nodes.values()))
            c.kill("n4")
            c.kill("n5")
            await c.wait_until(
                lambda: not any(m.reachable for m in node.members() if m.name in ("n4", "n5"))
            )
        async with open_client(["n1:7400"], transport=c.net.transport("client:7400")) as client:
            with trio.fail_after(60):
                on_node = await node.remove("n4")
                on_client = await client.remove("n5")
    assert type(on_node) is type(on_client) is dict
    assert sorted(on_node) == sorted(on_client) == ["generation", "leader", "minority", "removed"]
    assert (on_node["removed"], on_client["removed"]) == ("n4", "n5")


async def test_leave_returns_the_same_type(autojump_clock: trio.testing.MockClock) -> None:
    async with open_sim_cluster(4, seed=4) as c:
        with trio.fail_after(60):
            await c.wait_until(lambda: all(n.statistics().table_epoch for n in c.nodes.values()))
        async with open_client(["n2:7400"], transport=c.net.transport("client:7400")) as client:
            with trio.fail_after(120):
                on_client = await client.leave()
                on_node = await c.nodes["n3"].leave()
    assert type(on_node) is type(on_client) is dict
    assert sorted(on_node) == sorted(on_client) == ["ok", "status"]
    assert (on_node["status"], on_client["status"]) == ("left", "leaving")


async def test_a_lone_member_refuses_to_leave_unforced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outcomes = []
    for via_client in (True, False):
        async with open_sim_cluster(1, seed=5) as c:
            node = c.nodes["n1"]
            with trio.fail_after(30):
                await node.wait_ready()
            if via_client:
                transport = c.net.transport("client:7400")
                async with open_client(["n1:7400"], transport=transport) as client:
                    outcomes.append(await _outcome(client, lambda api: api.leave()))
            else:
                with trio.fail_after(120):
                    outcomes.append(await _outcome(node, lambda api: api.leave()))
    assert outcomes[0][0] == "InvalidArgument"
    assert outcomes[1] == outcomes[0]


async def test_members_and_statistics_return_the_same_types(both: tuple[Node, Any]) -> None:
    node, client = both
    on_node, on_client = node.members(), await client.members()
    assert type(on_node) is type(on_client) is list
    assert all(type(m) is MemberView for m in on_node + on_client)

    # The same table, up to what moves between two looks (heartbeats, suspicion).
    def still(rows: list[MemberView]) -> list[tuple[object, ...]]:
        return [(m.name, m.address, m.status, m.generation, m.is_self, m.is_leader) for m in rows]

    assert still(on_client) == still(on_node)
    assert [m.name for m in on_client if m.is_self] == ["n1"]
    stats_node, stats_client = node.statistics(), await client.statistics()
    assert type(stats_node) is type(stats_client) is NodeStatistics
    assert (stats_client.name, stats_client.table_epoch) == (
        stats_node.name,
        stats_node.table_epoch,
    )


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"self": "n1", "leader": None, "members": "n1"},
        {"self": "n1", "leader": None, "members": [{"name": "n1"}]},
        {"self": 1, "leader": None, "members": []},
    ],
    ids=repr,
)
async def test_a_malformed_members_reply_is_a_decode_error(
    both: tuple[Node, Any], body: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, client = both

    async def reply(*args: object, **kwargs: object) -> dict[str, object]:
        return body

    monkeypatch.setattr(client._connection, "request", reply)
    with pytest.raises(DecodeError):
        await client.members()
    with pytest.raises(DecodeError):
        await client.statistics()


async def test_the_cli_members_json_is_the_wire_shape(both: tuple[Node, Any]) -> None:
    from gossipkv_cli._render import members_doc

    from gossipkv._handlers import members_body

    node, _ = both
    rows = node.members()
    assert members_doc(rows) == members_body(node.name, node.leader(), rows)
