"""The embedded client on a simulated cluster: request timeouts and failover, under an autojump
MockClock across several seeds."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv import TransportError, open_client

from ._kvsim import kv_cluster

CLIENT_SEEDS = [5, 6, 7]


@pytest.fixture(params=CLIENT_SEEDS, ids=[f"seed{s}" for s in CLIENT_SEEDS])
def cseed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


async def test_a_silent_peer_times_out_and_the_client_fails_over(
    cseed: int, autojump_clock: trio.testing.MockClock
) -> None:
    seed = cseed
    async with kv_cluster(seed, n=3) as c:
        peers = [c.address("n2"), c.address("n3")]
        async with open_client(
            peers, transport=c.net.transport("client:1"), request_timeout=2.0
        ) as client:
            with trio.fail_after(30):
                first = await client.put("k", "v1")
                assert client.connected_to == c.address("n2"), f"seed={seed}"
                c.pause("n2")  # a SIGSTOPped peer: the connection stays open, nothing answers
                started = trio.current_time()
                got = await client.get("k")
                waited = trio.current_time() - started
            assert got.values == ["v1"] and got.context == first.context, f"seed={seed}: {got}"
            assert client.connected_to == c.address("n3"), f"seed={seed}"
            # The request timeout (checked with a sixteenth of slack) passed before failing over.
            assert 2.0 <= waited <= 2.0 + 2.0 / 16 + 1.0, f"seed={seed}: waited {waited:.2f} s"
            c.pause("n3")
            with trio.fail_after(30):
                with pytest.raises(TransportError):
                    await client.get("k")
            c.resume("n2")
            c.resume("n3")
