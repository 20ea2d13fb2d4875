"""Issue 10, memory and connections: nothing a client sends may blow up a peer's memory, stall
its event loop into false downs, or take connections from the members and well-behaved clients.

Three real peers with data dirs; the attacks (``_scenarios.py``) come from raw sockets bound to
127.0.0.2 and aim at the second peer, while a well-behaved client writes through all of them.
After each attack: RSS stayed under budget (sampled every 50 ms during and after), no peer saw
another down and the leader did not change, the refusal was counted, every peer is alive, every
acknowledged write reads back on every replica, and the attacked peer restarts cleanly.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio

from . import _expect, _scenarios
from ._cluster import Cluster, Observation, client_of, observing
from ._invariants import (
    Acked,
    assert_acked,
    assert_alive,
    assert_counted,
    assert_no_false_downs,
    assert_rss_bounded,
    counter_deltas,
    print_figures,
    write_around,
    write_before,
)

pytestmark = [pytest.mark.abuse, pytest.mark.proc]

SAMPLE_WINDOW = 1.0  # seconds of RSS sampling with the attack in place, after it was sent


async def restart(cluster: Cluster, name: str, sig: int) -> None:
    """The attacked peer stops (graceful leave or crash) and starts again on its data dir."""
    if sig == signal.SIGTERM:
        code = await cluster.restart_gracefully(name)
        assert code == 0, f"{name}: a graceful leave exited with {code}"
    else:
        await cluster.restart_crashed(name)


async def finish(
    cluster: Cluster,
    obs: Observation,
    acked: Acked,
    *,
    target: str,
    sig: int,
) -> None:
    """The checks after every attack that do not depend on the attack."""
    assert_no_false_downs(obs)
    assert_alive(cluster)
    await assert_acked(cluster, acked)
    await restart(cluster, target, sig)
    await assert_acked(cluster, acked)


def figures(
    attack: str, cluster: Cluster, obs: Observation, before: Any, after: Any, out: Any
) -> None:
    print_figures(attack, cluster, obs, after, counter_deltas(before, after), out.text())


async def test_big_frame_before_hello(cluster: Cluster) -> None:
    target = cluster.names[1]
    acked = Acked()
    await write_before(cluster, acked, "bigframe")
    before = await cluster.stats()
    async with observing(cluster) as obs, trio.open_nursery() as background:
        background.start_soon(write_around, cluster, acked, "bigframe")
        async with _scenarios.big_frame_before_hello(cluster.addr(target)) as out:
            await trio.sleep(SAMPLE_WINDOW)
        background.cancel_scope.cancel()
    after = await cluster.stats()
    figures("big_frame_before_hello", cluster, obs, before, after, out)

    assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
    assert out.notes["closed_by_peer"], out.notes
    await assert_counted(cluster, before, "big_frame_before_hello", within=_expect.COUNTER_WITHIN)
    await finish(cluster, obs, acked, target=target, sig=signal.SIGKILL)


async def test_half_sent_frames(cluster: Cluster) -> None:
    target = cluster.names[1]
    acked = Acked()
    await write_before(cluster, acked, "halfsent")
    before = await cluster.stats()
    async with observing(cluster) as obs, trio.open_nursery() as background:
        background.start_soon(write_around, cluster, acked, "halfsent")
        async with _scenarios.half_sent_frames(cluster.addr(target)) as out:
            await trio.sleep(SAMPLE_WINDOW)
            assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
            async with client_of(cluster.addr(target)) as c:
                await c.get("halfsent-before-0")
            # The frame deadline closes them while they are still open.
            await assert_counted(
                cluster, before, "half_sent_frames", within=_expect.DEADLINE_COUNTER_WITHIN
            )
        background.cancel_scope.cancel()
    after = await cluster.stats()
    figures("half_sent_frames", cluster, obs, before, after, out)
    assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
    await finish(cluster, obs, acked, target=target, sig=signal.SIGTERM)


@pytest.mark.parametrize("connections", _scenarios.UNREAD_CONNECTIONS)
async def test_unread_replies(cluster: Cluster, connections: int) -> None:
    target = cluster.names[1]
    acked = Acked()
    await write_before(cluster, acked, "unread")
    async with client_of(cluster.addr(cluster.names[0])) as c:
        await acked.put(c, "unread-1mib", b"v" * _scenarios.UNREAD_VALUE_BYTES, w=3)
    before = await cluster.stats()
    async with observing(cluster) as obs, trio.open_nursery() as background:
        background.start_soon(write_around, cluster, acked, "unread")
        async with _scenarios.unread_gets(cluster.addr(target), connections, "unread-1mib") as out:
            await trio.sleep(SAMPLE_WINDOW)
        background.cancel_scope.cancel()
    after = await cluster.stats()
    figures(f"unread_replies x{connections}", cluster, obs, before, after, out)

    assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
    await assert_counted(cluster, before, "unread_replies", within=_expect.COUNTER_WITHIN)
    await finish(cluster, obs, acked, target=target, sig=signal.SIGKILL)


async def test_connection_flood(cluster: Cluster) -> None:
    target = cluster.names[1]
    acked = Acked()
    await write_before(cluster, acked, "flood")
    before = await cluster.stats()
    async with observing(cluster) as obs, trio.open_nursery() as background:
        background.start_soon(write_around, cluster, acked, "flood")
        async with _scenarios.connection_flood(cluster.addr(target)) as out:
            # Members and well-behaved clients (from another source address) are still served.
            async with client_of(cluster.addr(target)) as c:
                await acked.put(c, "flood-during", "served", w=3)
                await c.get("flood-before-0")
            await trio.sleep(SAMPLE_WINDOW)
            await assert_counted(cluster, before, "connection_flood", within=_expect.COUNTER_WITHIN)
            await assert_counted(
                cluster, before, "silent_connections", within=_expect.DEADLINE_COUNTER_WITHIN
            )
        background.cancel_scope.cancel()
    after = await cluster.stats()
    figures("connection_flood", cluster, obs, before, after, out)
    assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
    await finish(cluster, obs, acked, target=target, sig=signal.SIGTERM)


async def test_watch_flood(cluster: Cluster) -> None:
    target = cluster.names[1]
    acked = Acked()
    await write_before(cluster, acked, "watch")
    before = await cluster.stats()
    async with observing(cluster) as obs, trio.open_nursery() as background:
        background.start_soon(write_around, cluster, acked, "watch")
        async with _scenarios.watch_flood(cluster.addr(target)) as out:
            failed = await _scenarios.watched_writes(cluster.addr(cluster.names[0]), acked)
            out.notes["watched_puts_failed"] = failed
            await trio.sleep(SAMPLE_WINDOW)
        background.cancel_scope.cancel()
    after = await cluster.stats()
    figures("watch_flood", cluster, obs, before, after, out)

    assert_rss_bounded(cluster, obs.rss.peak, {target: out.outbound})
    await assert_counted(cluster, before, "watch_flood", within=_expect.COUNTER_WITHIN)
    await finish(cluster, obs, acked, target=target, sig=signal.SIGKILL)
