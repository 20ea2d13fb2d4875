"""NetworkLimits on simulated clusters (MockClock, several seeds): idle connections, watch caps,
connection caps, the frame deadline and the connection statistics."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import NetworkLimits, RemoteError, TransportError, open_client
from gossipkv._client._connection import ignore_oneway
from gossipkv._codec import encode
from gossipkv._messages import PROTOCOL_VERSION, Hello, Kind, WatchRequest

from ..sim._checks import all_up, describe
from ._netsim import limited_cluster, refused


async def test_idle_clients_are_closed_and_reconnect_members_never_idle_out(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    # A shorter idle timeout than the default 120 s: the same rule, a sixth of the simulated time.
    idle = 20.0
    async with limited_cluster(seed, limits=NetworkLimits(idle_timeout=idle)) as c:
        n1 = c.nodes["n1"]
        # One peer listed: a reconnect must not need a second peer to fail over to.
        async with open_client([c.address("n1")], transport=c.net.transport("client:1")) as client:
            with trio.fail_after(30):
                first = await client.put("k", "v1")
            for round_ in range(3):
                with trio.fail_after(3 * idle):
                    await n1.wait_until(lambda n, r=round_: refused(n, "idle_timeout") > r)
                with trio.fail_after(30):
                    # A read, a retry-safe write and an operator request (never retried
                    # elsewhere) each find the connection closed and open a new one.
                    if round_ == 0:
                        got = await client.get("k")
                        assert got.values == ["v1"], f"seed={seed}: {got}"
                    elif round_ == 1:
                        await client.put("k", "v2", context=first.context)
                    else:
                        await client.set_metadata("role", "idle-test")
        assert refused(n1, "idle_timeout") == 3, f"seed={seed}"
        # 3 idle periods: members gossip several times a second, so none of them idled out.
        assert all_up(c, ["n1", "n2", "n3"]), f"seed={seed}\n{describe(c)}"
        for name in ("n2", "n3"):
            assert refused(c.nodes[name], "idle_timeout") == 0, f"seed={seed}: {name}"
        assert n1.statistics().peer_connections >= 2, f"seed={seed}"


async def test_watches_are_capped_per_connection_and_per_node(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    limits = NetworkLimits(max_watches_per_connection=2, max_watches=3)
    async with limited_cluster(seed, limits=limits) as c:
        n1 = c.nodes["n1"]
        async with (
            open_client([c.address("n1")], transport=c.net.transport("client:1")) as client,
            trio.open_nursery() as nursery,
        ):
            first = await client._connection.dial(c.address("n1"), ignore_oneway, nursery)
            second = await client._connection.dial(c.address("n1"), ignore_oneway, nursery)
            with trio.fail_after(30):
                for _ in range(2):
                    await first.request(WatchRequest(""))
                with pytest.raises(RemoteError) as info:
                    await first.request(WatchRequest(""))  # the connection's third
                assert info.value.code == "too_many_watches", f"seed={seed}"
                await second.request(WatchRequest("a"))  # the node's third
                with pytest.raises(RemoteError) as info:
                    await second.request(WatchRequest("b"))  # the node's fourth
                assert info.value.code == "too_many_watches", f"seed={seed}"
            assert refused(n1, "watch_limit") == 2, f"seed={seed}"
            # The watch the client asks every member for is refused by n1 only.
            with trio.fail_after(30):
                async with client.watch("k") as changes:
                    await client.put("k", "x")
                    change = await changes.receive()
                    assert change.key == "k", f"seed={seed}"
            assert refused(n1, "watch_limit") == 3, f"seed={seed}"
            await first.aclose()
            await second.aclose()
            with trio.fail_after(30):
                await n1.wait_until(lambda n: n.statistics().watches == 0)
            nursery.cancel_scope.cancel()


async def test_a_client_refused_everywhere_gets_too_many_watches(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    limits = NetworkLimits(max_watches=1)
    async with limited_cluster(seed, limits=limits) as c:
        addresses = [c.address(n) for n in ("n1", "n2", "n3")]
        async with (
            open_client(addresses, transport=c.net.transport("client:1")) as one,
            open_client(addresses, transport=c.net.transport("client:2")) as two,
        ):
            with trio.fail_after(30):
                async with one.watch(""):
                    with pytest.raises(RemoteError) as info:
                        async with two.watch(""):
                            pass
            assert info.value.code == "too_many_watches", f"seed={seed}"


async def test_connection_caps_refuse_and_count_while_the_rest_works(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    limits = NetworkLimits(max_connections_per_source=3, max_connections_per_peer=2)
    async with limited_cluster(seed, limits=limits) as c:
        n1 = c.nodes["n1"]
        address = c.address("n1")
        async with (
            open_client([address], transport=c.net.transport("client:1")) as client,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(30):
                await client.put("k", "v")  # the client's own connection: 1 from client:1
                extra = [
                    await client._connection.dial(address, ignore_oneway, nursery) for _ in range(2)
                ]
                with pytest.raises(TransportError):
                    await client._connection.dial(
                        address, ignore_oneway, nursery
                    )  # 4 from one source
            assert refused(n1, "source_limit") == 1, f"seed={seed}"
            # Hellos claiming one member name (from another source): at most 2 connections.
            transport = c.net.transport("rogue:1")
            hello = encode(Kind.ONEWAY, 0, Hello(PROTOCOL_VERSION, "gossipkv", "n9", 1, "n9:7400"))
            accepted = 0
            for _ in range(3):
                conn = await transport.connect(address)
                await conn.send(hello)
                with trio.fail_after(30):
                    try:
                        await conn.receive()  # n1's hello back, or the close
                        accepted += 1
                    except TransportError:
                        pass
            assert accepted == 2, f"seed={seed}"
            assert refused(n1, "peer_limit") == 1, f"seed={seed}"
            with trio.fail_after(30):
                assert (await client.get("k")).values == ["v"], f"seed={seed}"
            assert all_up(c, ["n1", "n2", "n3"]), f"seed={seed}\n{describe(c)}"
            for channel in extra:
                await channel.aclose()
            nursery.cancel_scope.cancel()


async def test_total_connection_cap(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    async with limited_cluster(seed, limits=NetworkLimits(max_connections=6)) as c:
        n1 = c.nodes["n1"]
        address = c.address("n1")
        async with (
            open_client([address], transport=c.net.transport("client:1")) as client,
            trio.open_nursery() as nursery,
        ):
            with trio.fail_after(30):
                await client.put("k", "v")
            opened = []
            with trio.fail_after(60):
                while True:
                    try:
                        opened.append(
                            await client._connection.dial(address, ignore_oneway, nursery)
                        )
                    except TransportError:
                        break
            assert n1.statistics().accepted_connections == 6, f"seed={seed}"
            assert refused(n1, "connection_limit") == 1, f"seed={seed}"
            with trio.fail_after(30):
                assert (await client.get("k")).values == ["v"], f"seed={seed}"
            for channel in opened:
                await channel.aclose()
            nursery.cancel_scope.cancel()


async def test_a_slow_body_is_cut_at_the_frame_deadline(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with limited_cluster(seed, limits=NetworkLimits(frame_timeout=5.0)) as c:
        n1 = c.nodes["n1"]
        slow = c.net.transport("slow:1")
        c.net.set_link("slow:1", c.address("n1"), bandwidth=1000.0)  # a 100 KB frame: 100 s
        async with open_client([c.address("n1")], transport=slow, request_timeout=60.0) as client:
            with trio.fail_after(300), pytest.raises(TransportError):
                await client.put("big", "x" * 100_000)
            assert refused(n1, "frame_timeout") >= 1, f"seed={seed}"
            transport = n1.settings.transport
            assert transport is not None
            budget = transport.receive_budget
            assert budget is not None and budget.reserved == 0, f"seed={seed}"
            c.net.set_link("slow:1", c.address("n1"), bandwidth=10e6)
            with trio.fail_after(60):
                await client.put("big", "x" * 100_000)


async def test_the_connection_statistics_count_every_channel(
    seed: int, autojump_clock: trio.testing.MockClock
) -> None:
    async with limited_cluster(seed) as c:
        n1 = c.nodes["n1"]
        address = c.address("n1")

        def counts() -> tuple[int, int, int]:
            s = n1.statistics()
            assert s.connections == s.peer_connections + s.client_connections
            return s.connections, s.peer_connections, s.client_connections

        # Members: every channel the node runs (inbound and outbound) is one connection.
        _, peers, clients = counts()
        assert clients == 0 and peers >= 2, f"seed={seed}: {counts()}"
        assert peers == n1._rt.conns.peer_channels, f"seed={seed}"
        async with open_client([address], transport=c.net.transport("client:1")) as one:
            with trio.fail_after(30):
                await one.get("k")
            async with open_client([address], transport=c.net.transport("client:2")) as two:
                with trio.fail_after(30):
                    await two.get("k")
                assert counts()[2] == 2, f"seed={seed}: {counts()}"
            with trio.fail_after(30):
                await n1.wait_until(lambda n: n.statistics().client_connections == 1)
        with trio.fail_after(30):
            await n1.wait_until(lambda n: n.statistics().client_connections == 0)
        assert counts()[1] >= 2, f"seed={seed}: {counts()}"
