"""One API for Node and Client (issue 14 §3): the same call, with the same bad input, raises the
same exception type with the same message (up to its first colon), and the same good call returns the same types,
whether it goes through an embedded :class:`Node` or a :class:`Client` of one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from gossipkv import (
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
    "delete: context garbage": lambda api: api.delete("k", context=b"\xff"),
    "delete: w above N": lambda api: api.delete("k", w=4),
    "remove: unknown member": lambda api: api.remove("nosuch"),
    "set_metadata: empty key": lambda api: api.set_metadata("", "v"),
    "set_metadata: value too large": lambda api: api.set_metadata("k", "v" * 100_000),
}


async def _outcome(api: Any, call: Call) -> tuple[str, str]:
    try:
        result = call(api)
        if isinstance(result, Awaitable):
            result = await result
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

    from gossipkv._node import members_body

    node, _ = both
    rows = node.members()
    assert members_doc(rows) == members_body(node.name, node.leader(), rows)
