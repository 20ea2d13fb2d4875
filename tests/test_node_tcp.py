"""Nodes in this process over real loopback TCP: embedding, bad input, argument checks."""

from __future__ import annotations

import cbor2
import pytest
import trio

import gossipkv
from gossipkv import ConfigError, GossipConfig, Node, open_client, open_node

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=2.0)


async def _hello_bytes(cluster: str = "gossipkv") -> bytes:
    frame = cbor2.dumps(
        [3, 0, "hello", [gossipkv.PROTOCOL_VERSION, cluster, "rogue", 1, "1.2.3.4:5"]]
    )
    return len(frame).to_bytes(4, "big") + frame


def _frame(obj: object) -> bytes:
    body = cbor2.dumps(obj)
    return len(body).to_bytes(4, "big") + body


async def _send_and_drain(port: int, data: bytes) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    with trio.fail_after(10):
        try:
            while await stream.receive_some(4096):
                pass
        except trio.BrokenResourceError:
            pass
    await stream.aclose()


async def test_embedded_nodes_form_a_cluster_and_share_metadata() -> None:
    async with open_node(name="a", listen="127.0.0.1:0", config=FAST) as a:
        async with open_node(name="b", listen="127.0.0.1:0", seeds=[a.address], config=FAST) as b:
            b.set_metadata("role", "web")
            with trio.fail_after(10):
                await a.wait_until(
                    lambda n: (
                        {m.name: (m.status, m.metadata) for m in n.members()}.get("b")
                        == ("up", {"role": "web"})
                    )
                )
            assert a.leader() == b.leader() == "a"
            async with open_client([b.address]) as client:
                rows = await client.members()
            assert [m.name for m in rows if m.is_self] == ["b"]
            assert [m.name for m in rows if m.is_leader] == ["a"]
        # Leaving b's context made it leave gracefully.
        with trio.fail_after(10):
            await a.wait_until(lambda n: {m.name: m.status for m in n.members()}["b"] == "left")


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([0, 7, "no_such_message", []], "unknown_type"),
        ([0, 7, "syn", ["x", "not-an-int", []]], "bad_field"),
        ([0, 7, "syn"], "bad_shape"),
        ("just a string", "bad_shape"),
    ],
)
async def test_bad_frames_after_hello_close_one_connection_and_count(
    payload: object, reason: str
) -> None:
    async with open_node(name="a", listen="127.0.0.1:0", config=FAST) as a:
        port = int(a.address.rsplit(":", 1)[1])
        await _send_and_drain(port, await _hello_bytes() + _frame(payload))
        assert a.statistics().dropped_frames.get(reason, 0) == 1, a.statistics().dropped_frames
        async with open_client([a.address]) as client:
            assert [m.name for m in await client.members() if m.is_self] == ["a"]


async def test_deep_nesting_and_oversize_prefix_are_counted() -> None:
    async with open_node(name="a", listen="127.0.0.1:0", config=FAST) as a:
        port = int(a.address.rsplit(":", 1)[1])
        deep = b"\x81" * 5000 + b"\x00"
        await _send_and_drain(port, await _hello_bytes() + len(deep).to_bytes(4, "big") + deep)
        await _send_and_drain(port, (2**30).to_bytes(4, "big"))
        dropped = a.statistics().dropped_frames
        assert dropped.get("too_deep", 0) + dropped.get("bad_cbor", 0) == 1, dropped
        assert dropped.get("too_large", 0) == 1, dropped


async def test_wrong_cluster_hello_is_refused_with_a_reason() -> None:
    async with open_node(name="a", listen="127.0.0.1:0", config=FAST) as a:
        port = int(a.address.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(await _hello_bytes("other"))
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk
        await stream.aclose()
        reply = cbor2.loads(data[4:])
        assert reply[2] == "refused" and reply[3][0] == "cluster"
        assert "'other'" in reply[3][1] and "'gossipkv'" in reply[3][1]
        assert a.statistics().refused_handshakes == {"cluster": 1}


async def test_other_protocol_version_is_refused_with_a_reason() -> None:
    # The README's upgrade advice rests on this: no negotiation, a mismatch is refused.
    async with open_node(name="a", listen="127.0.0.1:0", config=FAST) as a:
        port = int(a.address.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        newer = gossipkv.PROTOCOL_VERSION + 1
        await stream.send_all(_frame([3, 0, "hello", [newer, "gossipkv", "x", 1, "1.2.3.4:5"]]))
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(4096):
                data += chunk
        await stream.aclose()
        reply = cbor2.loads(data[4:])
        assert reply[2] == "refused" and reply[3][0] == "protocol"
        assert f"peer speaks {newer}, this peer speaks {gossipkv.PROTOCOL_VERSION}" in reply[3][1]
        assert a.statistics().refused_handshakes == {"protocol": 1}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"listen": "nonsense"},
        {"listen": "127.0.0.1:99999"},
        {"seeds": "127.0.0.1:7400"},
        {"seeds": ["127.0.0.1"]},
        {"config": GossipConfig(gossip_interval=-1)},
        {"config": GossipConfig(fanout=0)},
        {"name": ""},
    ],
)
def test_bad_arguments_fail_at_call_time(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Node(**kwargs)  # type: ignore[arg-type]


async def test_bad_client_arguments_fail_at_call_time() -> None:
    with pytest.raises(ConfigError):
        async with open_client([]):
            pass
    with pytest.raises(ConfigError):
        async with open_client(["no-port"]):
            pass


async def test_second_node_on_the_same_data_dir_is_refused(tmp_path: object) -> None:
    async with open_node(name="a", listen="127.0.0.1:0", data_dir=tmp_path, config=FAST):
        with pytest.raises(gossipkv.DataDirError, match="in use by another"):
            async with open_node(name="a2", listen="127.0.0.1:0", data_dir=tmp_path, config=FAST):
                pass


async def test_generation_grows_across_restarts_on_one_data_dir(tmp_path: object) -> None:
    gens = []
    for _ in range(3):
        async with open_node(name="a", listen="127.0.0.1:0", data_dir=tmp_path, config=FAST) as a:
            gens.append(a.generation)
    assert gens == sorted(set(gens)), gens


async def test_a_stopped_node_refuses_calls_instead_of_hanging() -> None:
    async with open_node(name="solo", listen="127.0.0.1:0", config=FAST) as node:
        with trio.fail_after(10):
            while True:
                try:
                    await node.put("k", "v", w=1)
                    break
                except gossipkv.ClusterNotReady:
                    await trio.sleep(0.05)
    with trio.fail_after(5):
        with pytest.raises(gossipkv.NodeClosedError):
            await node.get("k")
        with pytest.raises(gossipkv.NodeClosedError):
            await node.put("k", "v")


async def test_wait_ready_then_watch_sees_the_nodes_own_writes() -> None:
    async with open_node(name="solo", listen="127.0.0.1:0", config=FAST) as node:
        with trio.fail_after(30):
            await node.wait_ready()
        async with node.watch("cart:") as changes:
            await node.put("cart:1", "apple")
            with trio.fail_after(10):
                change = await changes.receive()
        assert change.key == "cart:1" and change.values == ["apple"]
