"""The membership runtime: the loops that drive the sans-IO membership core.

Two loops per peer: the gossip loop (one scuttlebutt round every ``gossip_interval``: the core
picks whom to send SYNs to, each exchange runs in a task of its own, one per address at a
time) and the evaluation loop (failure detection, leader duties, the event-loop watchdog,
refusal logs, reincarnation after a removal; then the node tends its data and persists what
changed). The core decides; this module only sends, waits and hands on what it decided.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import trio

from ._errors import DecodeError, HandshakeError, RemoteError, TransportError
from ._histogram import LatencyHistogram
from ._hlc import HybridClock
from ._messages import Syn, SynAck
from ._peer import Channel
from ._pool import JOIN_PATIENCE, RateLimit
from .membership._gossiper import Gossiper, MembershipEvent
from .transport._base import Transport

if TYPE_CHECKING:
    from ._kv import KeyValueService

log = logging.getLogger("gossipkv.node")


@dataclass(slots=True)
class LoopLag:
    """How late the evaluation loop woke up: the last time and the worst so far (seconds)."""

    last: float = 0.0
    max: float = 0.0


class MembershipRuntime:
    """The gossip and evaluation loops of one peer (see the module docstring).

    Args:
      gossiper: the membership core (the node's, once it runs).
      nursery: where exchanges run.
      kv: the data path, once it exists (its transfers tell the core what is being pulled).
      transport: its pause gate (tests freeze a peer with it).
      channel_to: the connection pool's dial.
      hlc: the node's hybrid clock (SYNs carry a stamp).
      rng: the node's randomness (round jitter and the core's peer choice).
      wall: the wall clock in ms (generations, decisions).
      interval: ``GossipConfig.gossip_interval``.
      request_timeout: seconds one exchange may take (a joiner waits longer for a busy seed).
      log_limit: rate limit of repeated warnings.
      dropped: where exchanges that failed unexpectedly are counted.
      publish: hands a membership event to the node's subscribers.
      persist: saves the membership record.
      wipe: drops this replica's data (after a removal, its old data is no one's).
      tend_data: the node's data-side duties after each evaluation.
      evaluated: called after each evaluation (wakes :meth:`Node.wait_until`).
    """

    def __init__(
        self,
        *,
        gossiper: Callable[[], Gossiper],
        nursery: Callable[[], trio.Nursery],
        kv: Callable[[], KeyValueService | None],
        transport: Transport,
        channel_to: Callable[[str], Awaitable[Channel]],
        hlc: HybridClock,
        rng: random.Random,
        wall: Callable[[], int],
        interval: float,
        request_timeout: float,
        log_limit: RateLimit,
        dropped: Counter[str],
        publish: Callable[[MembershipEvent], None],
        persist: Callable[[], Awaitable[None]],
        wipe: Callable[[str], Awaitable[None]],
        tend_data: Callable[[Gossiper], Awaitable[None]],
        evaluated: Callable[[], None],
    ) -> None:
        self._gossiper = gossiper
        self._nursery = nursery
        self._kv = kv
        self._transport = transport
        self._channel_to = channel_to
        self._hlc = hlc
        self._rng = rng
        self._wall = wall
        self._interval = interval
        self._request_timeout = request_timeout
        self._log_limit = log_limit
        self._dropped = dropped
        self._publish = publish
        self._persist = persist
        self._wipe = wipe
        self._tend_data = tend_data
        self._evaluated = evaluated
        self._inflight: set[str] = set()
        self._last_waiting_log = -math.inf
        #: The evaluation loop's lateness: this peer's event-loop stalls.
        self.lag = LoopLag()
        #: Round trips of gossip exchanges.
        self.gossip_latency = LatencyHistogram()

    async def gossip_loop(self) -> None:
        interval = self._interval
        next_at = trio.current_time() + self._rng.random() * interval
        while True:
            await trio.sleep_until(next_at)
            await self._transport.wait_runnable()
            now = trio.current_time()
            for addr, syn in self._gossiper().tick(now, self._rng):
                if addr not in self._inflight:
                    self._inflight.add(addr)
                    stamped = replace(syn, hlc=self._hlc.now())
                    self._nursery().start_soon(self._exchange, addr, stamped)
            self._log_join_wait(now)
            next_at = max(next_at + interval, now)

    def _log_join_wait(self, now: float) -> None:
        g = self._gossiper()
        if g.status != "joining" or now - self._last_waiting_log < 5.0:
            return
        if now - g._started < 2.0:
            return
        self._last_waiting_log = now
        others = [m.name for m in g.members(now) if not m.is_self]
        if not others:
            log.warning(
                "%s: still trying to reach seeds %s", g.node_id, ", ".join(g.seeds) or "(none)"
            )
        else:
            log.warning(
                "%s: waiting for the leader to admit it (knows %d members)", g.node_id, len(others)
            )

    async def _exchange(self, addr: str, syn: Syn) -> None:
        started = trio.current_time()
        # A joiner knows only its seeds: an exchange it abandons is one the seed answered for
        # nothing, and the next round's attempt (on a new connection, if the handshake was cut
        # short) queues behind it. A busy seed's late answer is still worth waiting for; only
        # one exchange per address is ever in flight.
        joining = self._gossiper().status == "joining"
        timeout = self._request_timeout * (JOIN_PATIENCE if joining else 1)
        try:
            with trio.move_on_after(timeout):
                channel = await self._channel_to(addr)
                reply = await channel.request(syn)
                if isinstance(reply, SynAck):
                    self.gossip_latency.observe(trio.current_time() - started)
                    ack = self._gossiper().on_syn_ack(reply, trio.current_time())
                    if ack.delta or ack.wanted:
                        await channel.notify(ack)
        except HandshakeError as exc:
            # Another cluster or protocol at a seed is a configuration error: say so, once a
            # minute (the refusal is retried every round).
            if self._log_limit.allow(("refused by", addr, exc.reason), trio.current_time()):
                log.error("%s refuses this peer: %s", addr, exc)
        except (TransportError, RemoteError, DecodeError, trio.TooSlowError) as exc:
            log.debug("gossip with %s failed: %r", addr, exc)
        except Exception as exc:
            # Whatever a peer sent us (an address that does not parse, say) must not stop the node.
            self._dropped["exchange_error"] += 1
            log.warning("gossip with %s failed unexpectedly: %r", addr, exc)
        finally:
            self._inflight.discard(addr)

    async def evaluate_loop(self) -> None:
        # One timer for failure detection and the event-loop watchdog: a peer idles on few
        # wake-ups. The lag of this loop's own wake-ups is the loop lag (a stall of this peer).
        interval = min(0.2, self._interval / 2)
        next_at = trio.current_time()
        while True:
            next_at = max(next_at + interval, trio.current_time())
            await trio.sleep_until(next_at)
            now = trio.current_time()
            lag = now - next_at
            self.lag.last = lag
            self.lag.max = max(self.lag.max, lag)
            self._gossiper().note_loop_lag(lag, now)
            await self._transport.wait_runnable()
            g = self._gossiper()
            g.evaluate(trio.current_time(), self._wall())
            kv = self._kv()
            if kv is not None:
                transfers = kv.transfers
                transfers.notice()
                g.set_pulling(sorted({t.partition for t in transfers.in_flight()}))
                table = g.table()
                if (
                    g.replaces is not None
                    and g.status == "joining"
                    and table is not None
                    and table.owned_by(g.node_id)
                    and transfers.filled()
                ):
                    g.mark_filled()
            self.publish_events()
            while g.refusal_notes:
                reason, detail = g.refusal_notes.popleft()
                if self._log_limit.allow(("gossip refused", reason), trio.current_time()):
                    log.warning(
                        "%s: refused gossip (%s): %s; counted in stats refusals as gossip_%s",
                        g.node_id,
                        reason,
                        detail,
                        reason,
                    )
            if g.needs_reincarnation:
                generation = g.next_generation(self._wall())
                log.warning(
                    "%s was removed by the leader; rejoining as generation %d",
                    g.node_id,
                    generation,
                )
                g.reincarnate(generation, trio.current_time())
                await self._persist()
                # Its old replica is no one's now and may predate reaped tombstones.
                await self._wipe(f"{g.node_id} was removed while away")
            await self._tend_data(g)
            if g.decisions_dirty:
                await self._persist()
            self._evaluated()

    def publish_events(self) -> None:
        events = self._gossiper().events
        while events:
            event = events.popleft()
            log.info(
                "event %s %s gen=%s %s", event.kind, event.node_id, event.generation, event.detail
            )
            self._publish(event)
