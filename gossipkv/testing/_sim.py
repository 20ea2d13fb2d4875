"""SimNetwork: an in-memory, deterministic network for whole clusters in one Trio process.

It owns simulated processes (one per address), their connections and every frame in flight, and
implements the :class:`~gossipkv.transport.Transport` interface on top of them, so the node runtime
and the transport conformance suite run unchanged over it. Pattern: deterministic simulation
(FoundationDB/TigerBeetle style, see research A5): every frame goes into one heap keyed
``(deliver_at, src, dst, seq)`` and a single pump task (:meth:`SimNetwork.run`) delivers them in
that order; random decisions come from one ``random.Random`` per link derived from the seed, drawn
when a frame is sent. Trio runs the tasks ready at one moment in an order of its own choosing,
which peers' decisions do see; :meth:`SimNetwork.run` seeds that order from the network's seed
(:func:`seed_trio_scheduler`). Time is read only from ``trio.current_time()``, which under
``MockClock(autojump_threshold=0)`` makes a run repeatable: the same seed, the same run, in any
process (``tests/sim/test_determinism.py``).
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from gossipkv._codec import DEFAULT_MAX_FRAME
from gossipkv._errors import (
    ConfigError,
    ConnectionClosed,
    ConnectionRefused,
    DecodeError,
    TransportError,
)
from gossipkv._limits import SMALL_FRAME
from gossipkv._types import Address
from gossipkv.transport import Connection, Handler, Transport

_log = logging.getLogger("gossipkv.testing")

# Bounds, each with its overflow policy: beyond them a frame is dropped and counted as
# ``dropped_overflow`` (the simulated network is lossy by design; gossip tolerates loss, and a test
# that reaches these numbers has a runaway sender worth seeing in statistics()).
RECEIVE_BUFFER = 10_000  # frames delivered to one connection end but not yet received
MAX_IN_FLIGHT = 1_000_000  # frames in the delivery heap, network-wide
MAX_HELD = 100_000  # frames held for paused processes, network-wide

# A reordered frame is delayed by this many times the link latency (at least 1 ms), drawn uniformly,
# so frames sent after it on the same link overtake it.
_REORDER_DELAY = (1.0, 5.0)
_MIN_REORDER_BASE = 0.001


def _norm(address: str) -> str:
    try:
        return str(Address.parse(address))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


# --- configuration and statistics -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Link:
    """Effective settings of one directed link (src -> dst)."""

    latency: float
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    bandwidth: float = math.inf  # bytes per second of one connection's frames


def seed_trio_scheduler(seed: int | str) -> None:
    """Make the order in which Trio runs the tasks ready at the same moment follow ``seed``.

    Trio runs each batch of ready tasks in a random order (half the time reversed) from a
    module-level ``random.Random`` seeded by the OS, so that no program comes to rely on one order.
    In a simulation that order leaks into what peers decide (which of two replies is handled first,
    which gossip target a shared RNG draws): the same seed gave a different partition heal in each
    of five runs of 30 simulated peers. Trio's own switch for this (set by pytest-trio and
    Hypothesis: sort the batch by creation, then shuffle it with that ``Random``) makes it
    repeatable once the ``Random`` is seeded. Both are Trio internals: if they are gone, this does
    nothing rather than fail.
    """
    run_module = getattr(getattr(trio, "_core", None), "_run", None)
    scheduler_random = getattr(run_module, "_r", None)
    if not isinstance(scheduler_random, random.Random) or not hasattr(
        run_module, "_ALLOW_DETERMINISTIC_SCHEDULING"
    ):
        return
    setattr(run_module, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 (a Final)
    scheduler_random.seed(f"gossipkv-sim:{seed}")


@dataclass(frozen=True, slots=True)
class SimNetworkStatistics:
    """A snapshot of :meth:`SimNetwork.statistics`; counters only grow.

    Attributes:
      frames_sent: payloads handed to ``Connection.send`` (duplicates not included).
      frames_delivered: payloads placed in a receiver's buffer (duplicates included).
      frames_duplicated: extra copies created by the ``duplicate`` link setting.
      frames_reordered: frames given extra delay by the ``reorder`` link setting.
      dropped_loss: frames dropped by the ``loss`` link setting.
      dropped_partition: frames dropped because a partition separated their ends.
      dropped_crash: frames dropped because their sender or receiver crashed.
      dropped_closed: frames that arrived at a connection end that was already closed.
      dropped_overflow: frames dropped because a bounded buffer was full.
      bytes_sent: payload bytes handed to ``send``.
      bytes_delivered: payload bytes placed in receivers' buffers.
      connections_opened: successful ``connect`` calls.
      in_flight: frames (and close notices) currently in the delivery heap.
      held: frames currently held for a paused process.
    """

    frames_sent: int = 0
    frames_delivered: int = 0
    frames_duplicated: int = 0
    frames_reordered: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_crash: int = 0
    dropped_closed: int = 0
    dropped_overflow: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    connections_opened: int = 0
    in_flight: int = 0
    held: int = 0


@dataclass(slots=True)
class _Counters:
    frames_sent: int = 0
    frames_delivered: int = 0
    frames_duplicated: int = 0
    frames_reordered: int = 0
    dropped_loss: int = 0
    dropped_partition: int = 0
    dropped_crash: int = 0
    dropped_closed: int = 0
    dropped_overflow: int = 0
    bytes_sent: int = 0
    bytes_delivered: int = 0
    connections_opened: int = 0


# --- processes, connection ends and frames -----------------------------------------------------


class _Process:
    """One incarnation of the simulated process at an address (a restart makes a new one)."""

    def __init__(self, net: SimNetwork, address: str) -> None:
        self.address = address
        self.crashed = False
        self.crashed_event = trio.Event()
        self.paused = False
        self.resumed = trio.Event()
        self.ends: set[_SimConnection] = set()
        self.transport = _SimTransport(net, self)


@dataclass(slots=True)
class _Listener:
    process: _Process
    handler: Handler
    nursery: trio.Nursery


@dataclass(order=True, slots=True)
class _Frame:
    """A payload (or, with ``payload=None``, an end-of-stream notice) on its way to ``dst_end``.

    ``deliver_at`` is when its header arrives; its body has arrived ``transfer`` seconds later
    (the link's bandwidth).
    """

    deliver_at: float
    src: str
    dst: str
    seq: int
    payload: bytes | None = field(compare=False)
    src_end: _SimConnection = field(compare=False)
    dst_end: _SimConnection = field(compare=False)
    transfer: float = field(compare=False, default=0.0)


class _SimConnection(Connection):
    """One end of a simulated connection."""

    def __init__(self, net: SimNetwork, process: _Process, remote: str) -> None:
        self._net = net
        self.process = process
        self.local = process.address
        self._remote = remote
        self.peer: _SimConnection | None = None
        self.max_frame = process.transport.max_frame
        # (payload, when its body has arrived): a frame is in the inbox once its header is.
        self.inbox: deque[tuple[bytes, float]] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.closed = False  # closed at this end (aclose, handler exit, or crash)
        self.remote_closed = False  # the other end's close notice has arrived
        self.broken = False  # a DecodeError was raised; the connection is unusable
        self.last_deliver_at = -math.inf  # keeps in-order frames in order despite jitter
        self.last_any_deliver_at = -math.inf  # reordered and duplicate frames included

    @property
    def remote_address(self) -> str:
        return self._remote

    async def send(self, payload: bytes) -> None:
        """Send one payload; it arrives after the link latency unless a fault says otherwise.

        Never blocks (the network buffers; see ``MAX_IN_FLIGHT``).

        Raises:
          ConnectionClosed: this end was closed or crashed, or the other end's close has arrived.
        """
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise ConnectionClosed(f"connection {self.local} -> {self._remote} is closed")
        if self.remote_closed:
            raise ConnectionClosed(f"connection closed by {self._remote}")
        assert self.peer is not None
        self._net._send(self, self.peer, bytes(payload))

    async def receive(self) -> bytes:
        """Receive the next payload.

        Raises:
          ConnectionClosed: this end is closed, or the other end closed and every payload sent
            before that has been received.
          DecodeError: ``too_large`` when the payload exceeds this connection's ``max_frame``
            (checked when its header arrives, as TCP would), ``frame_timeout`` when its body
            takes longer than the transport's ``frame_timeout`` to arrive (a slow link, see
            ``SimNetwork.set_link(bandwidth=...)``); afterwards the connection is unusable.
        """
        await trio.lowlevel.checkpoint()
        while True:
            if self.closed or self.broken:
                raise ConnectionClosed(f"connection {self.local} -> {self._remote} is closed")
            if self.inbox:
                payload, complete_at = self.inbox.popleft()
                if len(payload) > self.max_frame:
                    self.broken = True
                    raise DecodeError(
                        "too_large",
                        f"frame of {len(payload)} bytes exceeds the {self.max_frame} limit",
                    )
                if complete_at > trio.current_time() or len(payload) > SMALL_FRAME:
                    await self._receive_body(len(payload), complete_at)
                return payload
            if self.remote_closed:
                raise ConnectionClosed(f"connection closed by {self._remote}")
            await self.lot.park()

    async def _receive_body(self, length: int, complete_at: float) -> None:
        """Wait for a body still arriving, as TCP would: after reserving it from the receive
        budget, and at most ``frame_timeout``."""
        transport = self.process.transport
        budget = transport.receive_budget if length > SMALL_FRAME else None
        reserved = 0 if budget is None else await budget.reserve(length)
        try:
            deadline = trio.current_time() + transport.frame_timeout
            while trio.current_time() < complete_at:
                if self.closed:
                    raise ConnectionClosed(f"connection {self.local} -> {self._remote} is closed")
                if trio.current_time() >= deadline:
                    self.broken = True
                    raise DecodeError(
                        "frame_timeout",
                        f"connection from {self._remote}: a frame of {length} bytes did not "
                        f"arrive within {transport.frame_timeout:g} s",
                    )
                with trio.move_on_at(min(complete_at, deadline)):
                    await self.lot.park()  # woken early by a close (or another arrival)
        finally:
            if budget is not None:
                budget.release(reserved)

    async def aclose(self) -> None:
        """Close this end; idempotent. The other end sees end-of-stream after the link latency."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.inbox.clear()
        self.process.ends.discard(self)
        self.lot.unpark_all()
        if self.peer is not None:
            self._net._send_close(self, self.peer)


class _SimTransport(Transport):
    """The transport of one simulated process (one incarnation)."""

    def __init__(self, net: SimNetwork, process: _Process) -> None:
        self._net = net
        self._process = process
        self.max_frame = net.max_frame

    @property
    def address(self) -> str:
        return self._process.address

    def _check_alive(self) -> None:
        if self._process.crashed:
            raise TransportError(f"simulated process {self._process.address} has crashed")

    async def serve(
        self,
        address: str,
        handler: Handler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on this process's address until cancelled or until the process crashes.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
          TransportError: ``address`` is not this process's address, another listener is live
            there, this process has crashed, or it crashes while serving.
        """
        where = _norm(address)
        await trio.lowlevel.checkpoint()
        process = self._process
        self._check_alive()
        if where != process.address:
            raise TransportError(
                f"cannot listen on {where}: this simulated process is {process.address}"
            )
        if where in self._net._listeners:
            raise TransportError(f"cannot listen on {where}: address in use")
        async with trio.open_nursery() as nursery:
            listener = _Listener(process, handler, nursery)
            self._net._listeners[where] = listener
            try:
                task_status.started(where)
                await process.crashed_event.wait()
                nursery.cancel_scope.cancel()  # a crash takes the handlers down with it
            finally:
                if self._net._listeners.get(where) is listener:
                    del self._net._listeners[where]
        raise TransportError(f"simulated process {where} crashed while serving")

    async def connect(self, address: str) -> Connection:
        """Connect to ``address`` after one link latency.

        Across a partition (either direction blocked) this waits until the partition heals or
        the caller cancels, like TCP into a black hole.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
          TransportError: nothing listens there ("connection refused") or this process crashed.
        """
        dst = _norm(address)
        net = self._net
        src = self._process.address
        await trio.lowlevel.checkpoint()
        while True:
            self._check_alive()
            while net._blocked(src, dst) or net._blocked(dst, src):
                await net._wait_topology_change()
                self._check_alive()
            link = net._link(src, dst)
            rng = net._rng(src, dst)
            await trio.sleep(link.latency + rng.uniform(0.0, link.jitter))
            if not (net._blocked(src, dst) or net._blocked(dst, src)):
                break
        self._check_alive()
        listener = net._listeners.get(dst)
        if listener is None or listener.process.crashed:
            raise ConnectionRefused(f"cannot connect to {dst}: connection refused")
        client = _SimConnection(net, self._process, dst)
        server = _SimConnection(net, listener.process, src)
        client.peer, server.peer = server, client
        self._process.ends.add(client)
        listener.process.ends.add(server)
        net._counters.connections_opened += 1
        listener.nursery.start_soon(_run_handler, listener.handler, server)
        return client

    def runnable(self) -> bool:
        return not (self._process.paused or self._process.crashed)

    async def wait_runnable(self) -> None:
        """Block while this process is paused.

        Raises:
          TransportError: the process has crashed (a crashed process runs nothing).
        """
        await trio.lowlevel.checkpoint()
        while self._process.paused:
            await self._process.resumed.wait()
        self._check_alive()


async def _run_handler(handler: Handler, conn: _SimConnection) -> None:
    try:
        await handler(conn)
    except Exception:
        _log.exception("connection handler on %s failed", conn.local)
    finally:
        conn.close()


# --- the network --------------------------------------------------------------------------------


class SimNetwork:
    """An in-memory network of simulated processes with scriptable faults.

    Run it under ``trio.testing.MockClock(autojump_threshold=0)``; with the same seed and the same
    scenario, every receiver sees the same payloads at the same virtual times.

    Args:
      seed: seeds every random decision (one ``random.Random`` per directed link, derived as
        ``f"{seed}/net/{src}->{dst}"``); print it when a test fails.
      latency: default one-way delay of every link, in seconds.
      jitter: default extra delay, uniform in ``[0, jitter]``; it never reorders a connection.
      max_frame: the ``max_frame`` each new connection starts with: a payload longer than its
        connection's ``max_frame`` makes the receiver's ``receive`` raise
        ``DecodeError("too_large")``, as :class:`~gossipkv.transport.TcpTransport` would.

    Raises:
      ConfigError: a negative latency, jitter or max_frame.

    Frames are delivered only while :meth:`run` is running (``await nursery.start(net.run)``).
    """

    def __init__(
        self,
        seed: int | str,
        *,
        latency: float = 0.001,
        jitter: float = 0.0,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if max_frame < 0:
            raise ConfigError(f"max_frame must be >= 0, got {max_frame}")
        self.seed = seed
        self.max_frame = max_frame
        self._default = _Link(latency=latency, jitter=jitter)
        _validate(self._default)
        self._rules: dict[tuple[str | None, str | None], dict[str, float]] = {}
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._seqs: dict[tuple[str, str], itertools.count[int]] = {}
        self._processes: dict[str, _Process] = {}
        self._listeners: dict[str, _Listener] = {}
        self._blocked_pairs: set[tuple[str, str]] = set()
        self._heap: list[_Frame] = []
        self._held: list[_Frame] = []
        self._pump_lot = trio.lowlevel.ParkingLot()
        self._topology = trio.Event()
        self._running = False
        self._counters = _Counters()

    # -- processes ----------------------------------------------------------------------------

    def transport(self, address: str) -> Transport:
        """The transport of the simulated process at ``address``.

        The same object until the process crashes; after :meth:`crash`, a fresh process (a
        restart: no listener, no connections, not paused).

        Args:
          address: ``host:port``; any host name will do (``"n1:7400"``).

        Returns:
          A :class:`~gossipkv.transport.Transport` to pass to ``Node(transport=...)`` or
          ``open_client(transport=...)``.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
        """
        where = _norm(address)
        process = self._processes.get(where)
        if process is None or process.crashed:
            process = _Process(self, where)
            self._processes[where] = process
        return process.transport

    def crash(self, address: str) -> None:
        """Crash the process at ``address`` now.

        Its listener disappears (its ``serve`` raises TransportError, cancelling its handlers),
        its connections close at once (its own operations raise ConnectionClosed), the other
        ends see end-of-stream after one link latency, frames in flight to or from it are dropped,
        and connecting to the address is refused until a restarted process serves again.
        Unknown or already crashed addresses are ignored.

        Args:
          address: the process's ``host:port``.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
        """
        process = self._processes.get(_norm(address))
        if process is None or process.crashed:
            return
        process.crashed = True
        process.paused = False
        process.crashed_event.set()
        process.resumed.set()
        for end in list(process.ends):
            end.close()
        listener = self._listeners.get(process.address)
        if listener is not None and listener.process is process:
            del self._listeners[process.address]
        kept = []
        for frame in self._held:
            if process in (frame.src_end.process, frame.dst_end.process):
                self._counters.dropped_crash += frame.payload is not None
            else:
                kept.append(frame)
        self._held = kept
        self._topology_changed()

    def pause(self, address: str) -> None:
        """Pause the process at ``address`` (like SIGSTOP).

        Frames to and from it are held and delivered after :meth:`resume`; its transport's
        ``wait_runnable`` blocks. Connections stay open and connecting to it still succeeds (the
        kernel accepts), but nothing it sends or is sent moves until it resumes.

        Args:
          address: the process's ``host:port``.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
        """
        process = self._processes.get(_norm(address))
        if process is None or process.crashed or process.paused:
            return
        process.paused = True
        process.resumed = trio.Event()

    def resume(self, address: str) -> None:
        """Resume a paused process; held frames are delivered now, each link still in order.

        Args:
          address: the process's ``host:port``.

        Raises:
          ConfigError: ``address`` is not ``host:port``.
        """
        process = self._processes.get(_norm(address))
        if process is None or not process.paused:
            return
        process.paused = False
        process.resumed.set()
        now = trio.current_time()
        still_held = []
        for frame in self._held:
            if frame.src_end.process.paused or frame.dst_end.process.paused:
                still_held.append(frame)
            else:
                frame.deliver_at = max(frame.deliver_at, now)
                heapq.heappush(self._heap, frame)
        self._held = still_held
        self._pump_lot.unpark_all()
        self._topology_changed()

    # -- faults -------------------------------------------------------------------------------

    def set_link(
        self,
        src: str | None = None,
        dst: str | None = None,
        *,
        latency: float | None = None,
        jitter: float | None = None,
        loss: float | None = None,
        duplicate: float | None = None,
        reorder: float | None = None,
        bandwidth: float | None = None,
    ) -> None:
        """Change the settings of the links from ``src`` to ``dst`` (None: every address).

        Settings given here override less specific ones: ``(src, dst)`` beats ``(None, dst)``
        beats ``(src, None)`` beats ``(None, None)`` beats the constructor's. Applies to frames
        sent from now on.

        Args:
          src: the sending address, or ``None`` for every one.
          dst: the receiving address, or ``None`` for every one.
          latency: one-way delay in seconds.
          jitter: extra delay, uniform in ``[0, jitter]``; frames on a connection stay in order.
          loss: probability that a frame is dropped.
          duplicate: probability that a frame is delivered twice (the copy arrives later).
          reorder: probability that a frame gets an extra delay of 1-5x the latency, so frames
            sent after it overtake it.
          bandwidth: bytes per second of each connection on the link (default: unlimited). A
            frame's header arrives after the latency and its body ``len / bandwidth`` seconds
            later; the next frame on the connection follows its body. Receivers apply their
            ``frame_timeout`` and receive budget to bodies still arriving, as over TCP.

        Raises:
          ConfigError: a negative delay, a probability outside ``[0, 1]`` or a bandwidth that is
            not > 0.
        """
        key = (None if src is None else _norm(src), None if dst is None else _norm(dst))
        given = {
            "latency": latency,
            "jitter": jitter,
            "loss": loss,
            "duplicate": duplicate,
            "reorder": reorder,
            "bandwidth": bandwidth,
        }
        rule = dict(self._rules.get(key, {}))
        rule.update({k: v for k, v in given.items() if v is not None})
        _validate(dataclasses.replace(self._default, **rule))
        self._rules[key] = rule

    def partition(self, *groups: Iterable[str], one_way: bool = False) -> None:
        """Stop frames between groups of addresses until :meth:`heal`.

        Symmetric by default: no frames between addresses in different groups. With
        ``one_way=True`` and exactly two groups, only frames from ``groups[0]`` to ``groups[1]``
        are dropped. Addresses in no group are unaffected. Partitions add up.

        Frames crossing a partition are dropped (counted in ``dropped_partition``), including
        those already in flight; established connections stay open, so traffic resumes after
        heal. ``connect`` across a partition waits until it heals or the caller cancels.

        Args:
          *groups: addresses, one iterable per side.
          one_way: with exactly two groups, drop only frames from the first to the second.

        Raises:
          ConfigError: ``one_way`` with other than two groups.
        """
        sets = [{_norm(a) for a in group} for group in groups]
        if one_way:
            if len(sets) != 2:
                raise ConfigError("a one-way partition takes exactly two groups")
            self._blocked_pairs.update(itertools.product(sets[0], sets[1]))
        else:
            for i, a in enumerate(sets):
                for j, b in enumerate(sets):
                    if i != j:
                        self._blocked_pairs.update((x, y) for x in a for y in b if x != y)
        self._topology_changed()

    def heal(self) -> None:
        """Remove every partition."""
        self._blocked_pairs.clear()
        self._topology_changed()

    def statistics(self) -> SimNetworkStatistics:
        """A snapshot of the network's counters."""
        return SimNetworkStatistics(
            **dataclasses.asdict(self._counters),
            in_flight=len(self._heap),
            held=len(self._held),
        )

    # -- the pump -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver frames in ``(deliver_at, src, dst, seq)`` order until cancelled.

        Start exactly one: ``await nursery.start(net.run)``.

        Raises:
          RuntimeError: it is already running.
        """
        if self._running:
            raise RuntimeError("SimNetwork.run is already running")
        self._running = True
        seed_trio_scheduler(self.seed)
        try:
            task_status.started()
            while True:
                now = trio.current_time()
                while self._heap and self._heap[0].deliver_at <= now:
                    self._deliver(heapq.heappop(self._heap))
                deadline = self._heap[0].deliver_at if self._heap else math.inf
                with trio.move_on_at(deadline):
                    await self._pump_lot.park()
        finally:
            self._running = False

    # -- internals ----------------------------------------------------------------------------

    def _link(self, src: str, dst: str) -> _Link:
        merged: dict[str, float] = {}
        for key in ((None, None), (src, None), (None, dst), (src, dst)):
            merged.update(self._rules.get(key, {}))
        return dataclasses.replace(self._default, **merged) if merged else self._default

    def _rng(self, src: str, dst: str) -> random.Random:
        # One stream per directed link, not per source: two tasks of one process sending to
        # different peers at the same virtual instant may run in either order, and must not
        # swap each other's random draws.
        rng = self._rngs.get((src, dst))
        if rng is None:
            rng = self._rngs[(src, dst)] = random.Random(f"{self.seed}/net/{src}->{dst}")
        return rng

    def _next_seq(self, src: str, dst: str) -> int:
        counter = self._seqs.get((src, dst))
        if counter is None:
            counter = self._seqs[(src, dst)] = itertools.count()
        return next(counter)

    def _blocked(self, src: str, dst: str) -> bool:
        return (src, dst) in self._blocked_pairs

    def _send(self, src_end: _SimConnection, dst_end: _SimConnection, payload: bytes) -> None:
        src, dst = src_end.local, dst_end.local
        counters = self._counters
        counters.frames_sent += 1
        counters.bytes_sent += len(payload)
        link = self._link(src, dst)
        rng = self._rng(src, dst)
        # Draw every random number for this frame up front, so the number of draws per frame is
        # fixed and one decision never shifts the stream seen by the next frame's decisions.
        lost = rng.random() < link.loss
        duplicated = rng.random() < link.duplicate
        reordered = rng.random() < link.reorder
        delay = link.latency + rng.uniform(0.0, link.jitter)
        extra = rng.uniform(*_REORDER_DELAY) * max(link.latency, _MIN_REORDER_BASE)
        dup_delay = link.latency + rng.uniform(0.0, max(link.jitter, link.latency))
        if lost:
            counters.dropped_loss += 1
            return
        if self._blocked(src, dst):
            counters.dropped_partition += 1
            return
        now = trio.current_time()
        transfer = len(payload) / link.bandwidth
        if reordered:
            counters.frames_reordered += 1
            deliver_at = now + delay + extra
        else:
            deliver_at = max(now + delay, src_end.last_deliver_at)
            # The next frame's header follows this one's body.
            src_end.last_deliver_at = deliver_at + transfer
        seq = self._next_seq(src, dst)
        self._push(_Frame(deliver_at, src, dst, seq, payload, src_end, dst_end, transfer))
        if duplicated:
            counters.frames_duplicated += 1
            dup_at, dup_seq = deliver_at + dup_delay, self._next_seq(src, dst)
            self._push(_Frame(dup_at, src, dst, dup_seq, payload, src_end, dst_end, transfer))
            deliver_at = dup_at
        src_end.last_any_deliver_at = max(src_end.last_any_deliver_at, deliver_at + transfer)

    def _send_close(self, src_end: _SimConnection, dst_end: _SimConnection) -> None:
        # The end-of-stream notice follows every frame already sent on this connection, reordered
        # and duplicated ones included (as TCP's FIN follows the data): a close never turns
        # reordering into loss.
        # It is not subject to loss or partitions (closes are reliable here, so the other end
        # always learns of a close or crash), but it is held while either process is paused.
        src, dst = src_end.local, dst_end.local
        now = trio.current_time()
        deliver_at = max(now + self._link(src, dst).latency, src_end.last_any_deliver_at)
        self._push(_Frame(deliver_at, src, dst, self._next_seq(src, dst), None, src_end, dst_end))

    def _push(self, frame: _Frame) -> None:
        if len(self._heap) >= MAX_IN_FLIGHT and frame.payload is not None:
            self._counters.dropped_overflow += 1
            return
        heapq.heappush(self._heap, frame)
        self._pump_lot.unpark_all()

    def _deliver(self, frame: _Frame) -> None:
        counters = self._counters
        is_data = frame.payload is not None
        dst_end = frame.dst_end
        if dst_end.process.crashed or (is_data and frame.src_end.process.crashed):
            counters.dropped_crash += is_data
            return
        if dst_end.closed:
            counters.dropped_closed += is_data
            return
        if frame.src_end.process.paused or dst_end.process.paused:
            if len(self._held) >= MAX_HELD and is_data:
                counters.dropped_overflow += 1
            else:
                self._held.append(frame)
            return
        if frame.payload is None:
            dst_end.remote_closed = True
        elif self._blocked(frame.src, frame.dst):
            counters.dropped_partition += 1
            return
        elif len(dst_end.inbox) >= RECEIVE_BUFFER:
            counters.dropped_overflow += 1
            return
        else:
            dst_end.inbox.append((frame.payload, frame.deliver_at + frame.transfer))
            counters.frames_delivered += 1
            counters.bytes_delivered += len(frame.payload)
        dst_end.lot.unpark_all()

    def _topology_changed(self) -> None:
        self._topology.set()
        self._topology = trio.Event()

    async def _wait_topology_change(self) -> None:
        await self._topology.wait()


def _validate(link: _Link) -> None:
    if not link.bandwidth > 0:
        raise ConfigError(f"bandwidth must be > 0 bytes/s, got {link.bandwidth!r}")
    for name in ("latency", "jitter"):
        value = getattr(link, name)
        if not (value >= 0 and math.isfinite(value)):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    for name in ("loss", "duplicate", "reorder"):
        value = getattr(link, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
