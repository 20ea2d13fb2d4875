"""The live dashboard's I/O half: poll every member, derive rates and events, drive ``Live``.

One task per member keeps one ``open_client`` connection to it and polls ``statistics()`` and
``members()`` every refresh, with bounded timeouts; a failed member is retried after a pause.
:class:`DashboardState` turns what the tasks last saw into a :class:`~._dashboard.Snapshot`
(rates from counter deltas, events from differences between successive members documents) and
switches to another reachable member when the watched one stops answering.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import trio
from rich.console import Console
from rich.live import Live

from gossipkv import histogram_quantile

from ._common import open_client
from ._dashboard import OPERATIONS, Snapshot, membership_events, render
from ._render import members_doc

HISTORY = 120
#: The bucket bounds of gossipkv's latency histograms (the same for every peer).
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
EVENTS = 50


@dataclass
class MemberLink:
    """What the poll task of one member address last saw."""

    address: str
    name: str | None = None
    stats: dict[str, Any] | None = None
    members: dict[str, Any] | None = None
    error: str | None = None
    polls: int = 0
    op_rates: dict[str, float] = field(default_factory=dict)
    rounds_per_s: float | None = None
    bytes_per_s: float | None = None
    prev: tuple[float, dict[str, Any]] | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    polled: trio.Event = field(default_factory=trio.Event)
    #: Set once two successive polls gave rates (what ``--once`` waits for).
    rated: trio.Event = field(default_factory=trio.Event)
    #: Latency histogram counts of the last poll interval, per operation.
    latency: dict[str, list[int]] = field(default_factory=dict)

    def update(self, stats: dict[str, Any], members: dict[str, Any], now: float) -> None:
        if self.prev is not None and now > self.prev[0]:
            dt = now - self.prev[0]
            old = self.prev[1]
            if old.get("generation") == stats.get("generation"):  # a restart resets counters
                self.op_rates = {
                    label: max(0.0, (int(stats[c]) - int(old[c])) / dt)
                    for c, label in OPERATIONS.items()
                }
                self.rounds_per_s = max(
                    0.0, (int(stats["gossip_rounds"]) - int(old["gossip_rounds"])) / dt
                )
                moved = int(stats["bytes_in"]) + int(stats["bytes_out"])
                self.bytes_per_s = max(
                    0.0, (moved - int(old["bytes_in"]) - int(old["bytes_out"])) / dt
                )
                self.latency = _latency_delta(old.get("latency"), stats.get("latency"))
                self.rated.set()
        self.prev = (now, stats)
        self.name = str(stats.get("name"))
        self.stats = stats
        self.members = members
        self.error = None
        self.polls += 1
        self.polled.set()

    def fail(self, error: str) -> None:
        self.rated.set()  # nothing more to wait for from this member
        self.stats = None
        self.members = None
        self.error = error
        self.prev = None
        self.op_rates = {}
        self.rounds_per_s = self.bytes_per_s = None
        self.polls += 1
        self.polled.set()


def _latency_delta(old: Any, new: Any) -> dict[str, list[int]]:
    """Per operation, the histogram counts observed between two snapshots."""
    out: dict[str, list[int]] = {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        return out
    for op, snap in new.items():
        before = old.get(op)
        if not isinstance(snap, dict) or not isinstance(before, dict):
            continue
        now_counts, then_counts = snap.get("counts"), before.get("counts")
        if isinstance(now_counts, list) and isinstance(then_counts, list):
            if len(now_counts) == len(then_counts):
                out[op] = [
                    max(0, int(a) - int(b)) for a, b in zip(now_counts, then_counts, strict=True)
                ]
    return out


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_one_line(e) for e in exc.exceptions[:2])
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    return str(exc) or type(exc).__name__


async def poll_member(link: MemberLink, cluster: str, interval: float, patience: float) -> None:
    """Poll one member until cancelled, reconnecting after failures."""
    while True:
        try:
            async with open_client(
                [link.address],
                cluster=cluster,
                connect_timeout=patience,
                request_timeout=patience,
            ) as client:
                next_at = trio.current_time()
                while True:
                    with trio.fail_after(2 * patience):
                        stats = await client.statistics()
                        members = await client.members()
                    link.update(asdict(stats), members_doc(members), trio.current_time())
                    next_at = max(next_at + interval, trio.current_time())
                    await trio.sleep_until(next_at)
        # A dashboard outlives any one member: every failure (refused, closed, timed out, wrong
        # cluster) is shown on its row and retried; cancellation is a BaseException and passes.
        except Exception as exc:
            link.fail(_one_line(exc))
        await trio.sleep(max(interval, 1.0))


async def check_peer(peer: str, cluster: str, patience: float) -> dict[str, Any]:
    """The peer's members document, or a :class:`gossipkv.GossipKVError` / ``TooSlowError``."""
    with trio.fail_after(2 * patience + 1):
        async with open_client(
            [peer], cluster=cluster, connect_timeout=patience, request_timeout=patience
        ) as client:
            doc = members_doc(await client.members())
            await client.statistics()
            return doc


class DashboardState:
    """Member poll tasks plus everything derived between frames."""

    def __init__(
        self, nursery: trio.Nursery, *, peer: str, cluster: str, refresh: float, patience: float
    ) -> None:
        self.nursery = nursery
        self.cluster = cluster
        self.refresh = refresh
        self.patience = patience
        self.watched = peer
        self.links: dict[str, MemberLink] = {}
        self.doc: dict[str, Any] | None = None
        self.events: deque[str] = deque(maxlen=EVENTS)
        self.history: dict[str, deque[float]] = {
            label: deque(maxlen=HISTORY) for label in OPERATIONS.values()
        }
        self.error: str | None = None
        self.started = trio.current_time()
        self.follow(peer)

    def follow(self, address: str) -> MemberLink:
        link = self.links.get(address)
        if link is None:
            link = self.links[address] = MemberLink(address)

            async def task() -> None:
                with link.scope:
                    await poll_member(link, self.cluster, self.refresh, self.patience)

            self.nursery.start_soon(task)
        return link

    def _sync_links(self, doc: Mapping[str, Any]) -> None:
        known = {
            str(m["address"])
            for m in doc.get("members", [])
            if m.get("address") and m.get("status") != "removed"
        }
        for address in known:
            self.follow(address)
        for address in list(self.links):
            if address not in known and address != self.watched:
                self.links.pop(address).scope.cancel()

    def _label(self, now: float) -> str:
        return f"t+{now - self.started:.0f}s"

    def tick(self, now: float, notice: str | None = None) -> Snapshot:
        """Derive one frame from the latest polls (call once per refresh)."""
        watched = self.links[self.watched]
        if watched.members is None and watched.error is not None:
            spare = next(
                (lk for lk in self.links.values() if lk.members is not None),
                None,
            )
            gone = f"{watched.name or self.watched} ({self.watched}) unreachable: {watched.error}"
            if spare is not None:
                self.error = f"{gone}; now watching {spare.name} ({spare.address})"
                self.events.append(f"{self._label(now)} {self.error}")
                self.watched = spare.address
                watched = spare
            else:
                self.error = f"{gone}; no other member answers"
        elif watched.members is not None and self.error and "no other member" in self.error:
            self.error = None
        if watched.members is not None:
            self.events.extend(membership_events(self.doc, watched.members, label=self._label(now)))
            self.doc = watched.members
            self._sync_links(self.doc)
        ok = [lk for lk in self.links.values() if lk.stats is not None and lk.name]
        for label, series in self.history.items():
            if any(label in lk.op_rates for lk in ok):
                series.append(sum(lk.op_rates.get(label, 0.0) for lk in ok))
        latency: dict[str, tuple[float | None, float | None]] = {}
        for op in ("get", "put"):
            rows = [lk.latency[op] for lk in ok if op in lk.latency]
            if rows:
                counts = [sum(col) for col in zip(*rows, strict=True)]
                snap: dict[str, object] = {"buckets": list(LATENCY_BUCKETS), "counts": counts}
                p50, p99 = histogram_quantile(snap, 0.5), histogram_quantile(snap, 0.99)
                latency[op] = (
                    None if p50 is None else p50 * 1000,
                    None if p99 is None else p99 * 1000,
                )
        rounds = [lk.rounds_per_s for lk in ok if lk.rounds_per_s is not None]
        moved = [lk.bytes_per_s for lk in ok if lk.bytes_per_s is not None]
        return Snapshot(
            cluster=self.cluster,
            watched=self.watched,
            members=self.doc,
            stats={str(lk.name): lk.stats for lk in ok if lk.stats is not None},
            ops_per_s={str(lk.name): sum(lk.op_rates.values()) for lk in ok if lk.op_rates},
            history={label: tuple(series) for label, series in self.history.items()},
            gossip_rounds_per_s=sum(rounds) if rounds else None,
            gossip_bytes_per_s=sum(moved) if moved else None,
            events=tuple(self.events),
            error=self.error,
            notice=notice,
            latency_ms=latency,
        )


async def run_dashboard(
    peer: str,
    cluster: str,
    *,
    refresh: float = 1.0,
    once: bool = False,
    console: Console | None = None,
    patience: float = 2.0,
    notice: Callable[[], str | None] | None = None,
) -> None:
    """Show the dashboard of the cluster ``peer`` belongs to until cancelled (or one frame).

    Args:
      notice: called every frame; a line it returns is shown in the header (the demo's
        "starting peers" progress). With it the first frame is drawn at once, before ``peer``
        answers; without it ``peer`` must answer first.

    Raises:
      GossipKVError, trio.TooSlowError: ``peer`` does not answer as a member of ``cluster``
        (only without ``notice``).
    """
    if notice is None:
        await check_peer(peer, cluster, patience)
    console = console or Console()
    async with trio.open_nursery() as nursery:
        state = DashboardState(
            nursery, peer=peer, cluster=cluster, refresh=refresh, patience=patience
        )
        if once:
            # Wait for the watched peer, then (boundedly) for two polls of every member it
            # lists: rates are differences between polls.
            with trio.move_on_after(3 * patience + 1):
                await state.links[peer].polled.wait()
            state.tick(trio.current_time())
            with trio.move_on_after(refresh + 3 * patience + 1):
                for link in list(state.links.values()):
                    await link.rated.wait()
            console.print(render(state.tick(trio.current_time())))
            nursery.cancel_scope.cancel()
            return

        def snap() -> Snapshot:
            return state.tick(trio.current_time(), notice() if notice is not None else None)

        if notice is None:
            await trio.sleep(min(refresh, 0.5))
        with Live(
            render(snap(), height=console.size.height - 1),
            console=console,
            auto_refresh=False,
            screen=False,
            vertical_overflow="crop",
        ) as live:
            next_at = trio.current_time()
            while True:
                next_at = max(next_at + refresh, trio.current_time())
                await trio.sleep_until(next_at)
                live.update(render(snap(), height=console.size.height - 1), refresh=True)
