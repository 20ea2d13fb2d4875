"""The membership runtime: the loops that drive the sans-IO membership core.

Two loops per peer, each sleeping until the core says there is something to do or until news
(the core's ``on_news``) wakes it: the gossip loop (the core plans each round: eager gossip while
there is news, failure-detection probes always; each exchange runs in a task of its own, one per
address at a time, and a probe that goes unanswered asks a few members to try) and the
evaluation loop (verdicts, leader duties, the event-loop watchdog, refusal logs, reincarnation
after a removal; then the node tends its data and persists what changed). This module also
answers other members' indirect probes. The core decides; this module only sends, waits and
hands on what it decided.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

import trio

from ._errors import ConnectionRefused, DecodeError, HandshakeError, RemoteError, TransportError
from ._histogram import LatencyHistogram
from ._hlc import HybridClock
from ._messages import ProbeRequest, ProbeResult, Syn, SynAck
from ._peer import Channel
from ._pool import JOIN_PATIENCE, RateLimit
from .membership._gossiper import Gossiper, MembershipEvent
from .transport._base import Transport

if TYPE_CHECKING:
    from ._kv import KeyValueService

log = logging.getLogger("gossipkv.node")

#: How one exchange ended: answered, refused (nothing listens there) or failed otherwise.
Outcome = Literal["answered", "refused", "failed"]


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
      connected: whether the pool has an open channel with an address.
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
        connected: Callable[[str], bool],
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
        self._connected = connected
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
        #: Set on news: wake the gossip loop (to start eager rounds) and the evaluation loop.
        self._gossip_news = trio.Event()
        self._evaluate_news = trio.Event()
        self._gossip_until = math.inf  # when the gossip loop wakes anyway
        #: The evaluation loop's lateness: this peer's event-loop stalls.
        self.lag = LoopLag()
        #: Round trips of gossip exchanges.
        self.gossip_latency = LatencyHistogram()

    def _on_news(self) -> None:
        # The evaluation loop looks at every change; the gossip loop only needs waking when it
        # would otherwise sleep past the next eager round.
        self._evaluate_news.set()
        if self._gossip_until > trio.current_time() + self._interval:
            self._gossip_news.set()

    async def gossip_loop(self) -> None:
        self._gossiper().on_news(self._on_news)
        next_at = trio.current_time() + self._rng.random() * self._interval
        while True:
            self._gossip_until = next_at
            with trio.move_on_at(next_at):
                await self._gossip_news.wait()
            self._gossip_news = trio.Event()
            self._gossip_until = math.inf
            await self._transport.wait_runnable()
            now = trio.current_time()
            g = self._gossiper()
            g.on_news(self._on_news)  # a new incarnation's core keeps waking us
            plan = g.plan(now, self._rng)
            if plan.syn is not None:
                syn = replace(plan.syn, hlc=self._hlc.now())
                nursery = self._nursery()
                for addr in plan.gossip:
                    if addr not in self._inflight:
                        self._inflight.add(addr)
                        nursery.start_soon(self._gossip, addr, syn)
                for node_id, addr in plan.probes:
                    nursery.start_soon(self._probe, node_id, addr, syn, now)
            self._log_join_wait(now)
            # Never spin: whatever the plan says, the next look is a moment away at least.
            next_at = max(plan.next_at, now + min(0.05, self._interval / 4))

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

    async def _gossip(self, addr: str, syn: Syn) -> None:
        """An exchange of a gossip round (one per address at a time: the caller marked it in
        flight), bounded by the request timeout."""
        # A joiner knows only its seeds: an exchange it abandons is one the seed answered for
        # nothing, and the next round's attempt (on a new connection, if the handshake was cut
        # short) queues behind it. A busy seed's late answer is still worth waiting for; only
        # one exchange per address is ever in flight.
        joining = self._gossiper().status == "joining"
        try:
            with trio.move_on_after(self._request_timeout * (JOIN_PATIENCE if joining else 1)):
                await self._exchange(addr, syn)
        finally:
            self._inflight.discard(addr)

    async def _exchange(self, addr: str, syn: Syn) -> Outcome:
        """One exchange with ``addr`` (callers bound it): ``"answered"``, ``"refused"`` (the
        connection was refused: nothing listens there) or ``"failed"`` (anything else)."""
        started = trio.current_time()
        try:
            channel = await self._channel_to(addr)
            reply = await channel.request(syn)
            if not isinstance(reply, SynAck):
                return "failed"
            self.gossip_latency.observe(trio.current_time() - started)
            ack = self._gossiper().on_syn_ack(reply, trio.current_time(), syn)
            if ack.delta or ack.wanted:
                await channel.notify(ack)
            return "answered"
        except ConnectionRefused as exc:
            log.debug("gossip with %s failed: %r", addr, exc)
            return "refused"
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
        return "failed"

    async def _attempt(self, addr: str, syn: Syn) -> Outcome | None:
        """One exchange with ``addr`` within the probe timeout (beside any other exchange with
        it): its outcome, or None if no answer came in time."""
        with trio.move_on_after(self._gossiper().probe_timeout()):
            return await self._exchange(addr, syn)
        return None

    async def _probe(self, node_id: str, addr: str, syn: Syn, started: float) -> None:
        """SWIM's probe: an exchange with ``node_id``; unanswered, a second one together with the
        same through a few other members (a lost message, or a broken link between two members,
        is no failure of either). The core hears the outcome: answered, refused (a crashed
        member refuses at once) or silent; or nothing, when the outcome came in so late that
        this peer's own loop must have been the slow one."""
        timeout = self._gossiper().probe_timeout()
        first = await self._attempt(addr, syn)
        ok = first == "answered"
        refused = unheard = False
        if not ok:
            # The first exchange may have failed on a connection the member's crash just
            # closed; a refusal counts only from a fresh connection, the second exchange's.
            helpers = self._gossiper().probe_helpers(node_id, self._rng, self._connected)
            ok, refused, nacks = await self._second_chance(node_id, addr, syn, helpers)
            unheard = bool(helpers) and nacks == 0
        await self._transport.wait_runnable()
        g = self._gossiper()
        now = trio.current_time()
        if ok:
            g.probe_ok(node_id, now)
        elif not refused and now - started > 3.5 * timeout:
            g.probe_inconclusive(node_id)  # its timeouts fired, but this peer ran late
        else:
            if unheard and not refused:
                # None of the members asked to try answered at all, not even "no answer from
                # it": this peer may be the slow one (Lifeguard's missed nack).
                g.missed_nacks()
            g.probe_failed(node_id, started, now, refused=refused)

    async def _second_chance(
        self, node_id: str, addr: str, syn: Syn, helpers: list[str]
    ) -> tuple[bool, bool, int]:
        """Whether ``node_id`` answers a second exchange, or any of ``helpers`` reaches it (each
        with one exchange of its own), within one and a half probe timeouts; whether the
        second exchange's connection was refused (nothing listens there); and how many helpers
        answered that they could not reach it either (nacks)."""
        answered = refused = False
        nacks = 0

        async def direct(cancel: trio.CancelScope) -> None:
            nonlocal answered, refused
            outcome = await self._exchange(addr, syn)
            if outcome == "answered":
                answered = True
                cancel.cancel()
            refused = outcome == "refused"

        async def ask(helper: str, cancel: trio.CancelScope) -> None:
            nonlocal answered, nacks
            try:
                channel = await self._channel_to(helper)
                reply = await channel.request(ProbeRequest(node_id))
            except ConnectionRefused:
                nacks += 1  # an answer of sorts: this peer's network works, the helper is gone
                return
            except (TransportError, RemoteError, DecodeError, HandshakeError) as exc:
                log.debug("indirect probe of %s through %s failed: %r", node_id, helper, exc)
                return
            except Exception as exc:
                self._dropped["exchange_error"] += 1
                log.warning("indirect probe through %s failed unexpectedly: %r", helper, exc)
                return
            if isinstance(reply, ProbeResult) and reply.ok:
                answered = True
                cancel.cancel()
            elif isinstance(reply, ProbeResult):
                nacks += 1

        with trio.move_on_after(1.5 * self._gossiper().probe_timeout()):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(direct, nursery.cancel_scope)
                for helper in helpers:
                    nursery.start_soon(ask, helper, nursery.cancel_scope)
        return answered, refused, nacks

    def lost_contact(self, node_id: str) -> None:
        """A connection with member ``node_id`` closed: the core probes it at the next look
        (a crashed member's connections close at once), so this loop looks now."""
        g = self._gossiper()
        if g.status == "joining":
            return
        g.lost_contact(node_id)
        self._gossip_news.set()

    async def serve_probe(self, request: ProbeRequest) -> ProbeResult:
        """Probe ``request.target`` for the member that asked (its own probe went unanswered)."""
        g = self._gossiper()
        addr = g.address_of(request.target)
        if addr is None or request.target == g.node_id:
            return ProbeResult(False)
        # Within the configured timeout even when this peer is slow itself: the asker waits
        # one and a half of its own (dialling this peer included), and takes no answer at all
        # as a sign that it is the slow one.
        with trio.move_on_after(g.config.probe_timeout):
            outcome = await self._exchange(addr, replace(g.syn(), hlc=self._hlc.now()))
            return ProbeResult(outcome == "answered")
        return ProbeResult(False)

    async def evaluate_loop(self) -> None:
        # One timer for verdicts, leader duties and the event-loop watchdog, set for when the
        # core next has something to do (a second at most) or woken by news: a quiet peer idles
        # on one wake-up a second. How late a wake-up runs is the loop lag (a stall of this
        # peer; a paused simulated peer is held in wait_runnable, which counts too).
        spacing = min(0.1, self._interval / 2)
        last = trio.current_time()
        while True:
            # At least once a second: the watchdog's look at this peer's own stalls, and the
            # node's data-side duties.
            due = min(max(self._gossiper().next_evaluation(), last + spacing), last + 1.0)
            with trio.move_on_at(due):
                await self._evaluate_news.wait()
            woke = trio.current_time()
            if woke < last + spacing:
                await trio.sleep_until(last + spacing)  # news: at most one look per spacing
            self._evaluate_news = trio.Event()
            scheduled = min(due, max(woke, last + spacing))
            await self._transport.wait_runnable()
            now = last = trio.current_time()
            lag = now - scheduled
            self.lag.last = lag
            self.lag.max = max(self.lag.max, lag)
            g = self._gossiper()
            g.note_loop_lag(lag, now)
            g.evaluate(now, self._wall())
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
