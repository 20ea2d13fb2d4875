"""``gossipkv bench gossip``: membership at scale, measured on real peer processes on loopback.

N peers start ``--spacing`` apart, all seeded by the first (a join storm). The benchmark reports
the time until every peer lists every other (from the peers' own event logs, so measuring adds no
traffic), the CPU each peer then uses at rest (``/proc``), the bytes each sends per second (the
peers' statistics), the false downs over a quiet window, and how long a SIGKILL takes to be seen
by every survivor. ``--compare-serf`` runs the same with HashiCorp Serf agents (``serf`` on PATH)
and prints both side by side. Numbers only, never a verdict.
"""

from __future__ import annotations

import compileall
import datetime as dt
import importlib.util
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from ._common import open_client
from ._launcher import free_base_port

# "2026-11-28 21:00:00,123 INFO gossipkv.node: event up n5 gen=..."
_GOSSIPKV_EVENT = re.compile(r"^(\S+ \S+) INFO gossipkv\.node: event (\w+) (\S+) ")
# "2026-11-28 21:00:00,123 INFO gossipkv.node: n5 listening on 127.0.0.1:7705 (generation ...)"
_GOSSIPKV_LISTENING = re.compile(r"^(\S+ \S+) INFO gossipkv\.node: (\S+) listening on ")
# "    2026/11/28 21:00:00 [INFO] serf: EventMemberJoin: s5 127.0.0.1"
_SERF_EVENT = re.compile(r"^\s*(\S+ \S+) \[INFO\] serf: EventMember(\w+): (\S+) ")
_SERF_KINDS = {"Join": "up", "Failed": "down"}


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    kind: str  # "up" (listed as a live member), "down", or "listening" (the peer itself)
    node: str


def read_events(path: Path, serf: bool) -> list[Event]:
    """The membership events one peer logged, oldest first."""
    out: list[Event] = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if serf:
            m = _SERF_EVENT.match(line)
            if m and m.group(2) in _SERF_KINDS:
                at = dt.datetime.strptime(m.group(1), "%Y/%m/%d %H:%M:%S")
                out.append(Event(at, _SERF_KINDS[m.group(2)], m.group(3)))
        elif m := _GOSSIPKV_EVENT.match(line):
            if m.group(2) in ("up", "down"):
                at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
                out.append(Event(at, m.group(2), m.group(3)))
        elif m := _GOSSIPKV_LISTENING.match(line):
            at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append(Event(at, "listening", m.group(2)))
    return out


@dataclass
class Fleet:
    """N processes of one system (gossipkv peers or Serf agents) and their logs."""

    system: str
    n: int
    log_dir: Path
    names: list[str] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)

    @property
    def serf(self) -> bool:
        return self.system == "serf"

    def command(self, i: int, base: int) -> list[str]:
        name = self.names[i]
        if self.serf:
            args = [
                "serf",
                "agent",
                "-node",
                name,
                "-bind",
                f"127.0.0.1:{base + i}",
                "-rpc-addr",
                f"127.0.0.1:{base + self.n + i}",
            ]
            # -retry-join, not -join: an agent started before the first one listens would give
            # up after one attempt (as our peers keep trying their seeds, so does Serf here).
            join = ["-retry-join", f"127.0.0.1:{base}", "-retry-interval", "1s"]
            return args + ([] if i == 0 else join)
        args = [
            sys.executable,
            "-m",
            "gossipkv_cli",
            "peer",
            "--name",
            name,
            "--listen",
            self.addresses[name],
            "--cluster",
            "bench",
            "--parent-pid",
            str(os.getpid()),
        ]
        return args + ([] if i == 0 else ["--seed", self.addresses[self.names[0]]])

    async def start(self, spacing: float) -> dt.datetime:
        if not self.serf:
            await trio.to_thread.run_sync(_compile_bytecode)
        prefix = "s" if self.serf else "n"
        self.names = [f"{prefix}{i}" for i in range(self.n)]
        ports = 2 * self.n if self.serf else self.n
        base = free_base_port("127.0.0.1", ports, 17700 if self.serf else 7700)
        self.addresses = {x: f"127.0.0.1:{base + i}" for i, x in enumerate(self.names)}
        started = dt.datetime.now()
        for i, name in enumerate(self.names):
            with open(self.log_dir / f"{name}.log", "wb") as log:  # noqa: ASYNC230 (a create)
                # Popen forks and execs; it does not wait for the child.
                self.procs[name] = subprocess.Popen(  # noqa: ASYNC220
                    self.command(i, base), stdout=log, stderr=log, stdin=subprocess.DEVNULL
                )
            await trio.sleep(spacing)
        return started

    def stamp(self, at: dt.datetime, *, until: bool = False) -> dt.datetime:
        """``at`` as the logs can tell it. Serf's log stamps whole seconds: a moment an event
        must come after is taken from the start of its second (a full view once came out at
        -0.3 s, and a down logged in the second of a SIGKILL went unseen), and with ``until``
        from the start of the next one (a window's start: what was logged earlier in that
        second is not in the window). Serf's figures are whole seconds, within a second either
        way, never negative."""
        if not self.serf:
            return at
        whole = at.replace(microsecond=0)
        return whole + dt.timedelta(seconds=1) if until and whole != at else whole

    async def events(self, names: list[str]) -> dict[str, list[Event]]:
        def read() -> dict[str, list[Event]]:
            return {x: read_events(self.log_dir / f"{x}.log", self.serf) for x in names}

        return await trio.to_thread.run_sync(read)

    def cpu_seconds(self) -> dict[str, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, proc in self.procs.items():
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[name] = (int(fields[11]) + int(fields[12])) / ticks
        return out

    async def bytes_out(self) -> dict[str, int]:
        if self.serf:
            return {}  # Serf reports no byte counters over its RPC
        out: dict[str, int] = {}
        # A few at a time: a hundred clients at once on a loaded machine time out.
        limit = trio.Semaphore(8)

        async def one(name: str) -> None:
            try:
                async with limit:
                    with trio.move_on_after(20):
                        async with open_client([self.addresses[name]], cluster="bench") as client:
                            stats = await client.statistics()
                            out[name] = stats.bytes_out
            except Exception:  # a peer that does not answer is left out of the mean
                return

        async with trio.open_nursery() as nursery:
            for name in self.names:
                nursery.start_soon(one, name)
        return out

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()


def _compile_bytecode() -> None:
    """Write the bytecode caches of gossipkv and its CLI, as installing a package does: a
    hundred peers that each compile every module from source (an editable install run with
    ``PYTHONDONTWRITEBYTECODE``) spend about half as much CPU again just starting, all at once,
    which is not what the benchmark measures. Unwritable directories are left as they are."""
    for package in ("gossipkv", "gossipkv_cli"):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(location, quiet=2)


async def _diagnose(fleet: Fleet, names: list[str], counts: dict[str, int]) -> dict[str, Any]:
    """What the seed and the peer that lists the fewest say about themselves, when no full
    view formed: their status, connections, refusals and event-loop lag."""
    keys = (
        "status",
        "members_by_status",
        "connections",
        "accepted_connections",
        "refusals",
        "refused_handshakes",
        "dropped_frames",
        "frames_in",
        "frames_out",
        "max_loop_lag",
    )
    out: dict[str, Any] = {}
    for name in dict.fromkeys([names[0], min(names, key=lambda x: counts[x])]):
        try:
            with trio.fail_after(10):
                async with open_client([fleet.addresses[name]], cluster="bench") as client:
                    stats = await client.statistics()
            out[name] = {key: getattr(stats, key) for key in keys}
        except Exception as exc:  # a peer that does not answer is itself the finding
            out[name] = {"error": repr(exc)}
    return out


def _first(events: list[Event], kind: str, node: str, after: dt.datetime) -> dt.datetime | None:
    for e in events:
        if e.kind == kind and e.node == node and e.at >= after:
            return e.at
    return None


def _last_listening(evs: dict[str, list[Event]]) -> dt.datetime | None:
    """When the last peer began to listen (``None``: some peer has not logged it)."""
    times = [next((e.at for e in evs[p] if e.kind == "listening"), None) for p in evs]
    return None if not times or None in times else max(t for t in times if t is not None)


def _full_view_at(evs: dict[str, list[Event]], names: list[str]) -> dt.datetime | None:
    """When the last peer came to list the last other peer as live (``None``: not yet)."""
    last = dt.datetime.min
    for p in names:
        seen: dict[str, dt.datetime] = {}
        for e in evs[p]:
            if e.kind == "up":
                seen.setdefault(e.node, e.at)
        missing = [q for q in names if q != p and q not in seen]
        if missing:
            return None
        last = max([last, *(seen[q] for q in names if q != p)])
    return last


async def measure(
    system: str, n: int, window: float, spacing: float, seed: int, say: Callable[[str], None]
) -> dict[str, Any]:
    log_dir = Path(tempfile.mkdtemp(prefix=f"gossipkv-bench-{system}-"))
    fleet = Fleet(system, n, log_dir)
    out: dict[str, Any] = {"system": system, "peers": n, "logs": str(log_dir)}
    try:
        started = fleet.stamp(await fleet.start(spacing))
        say(f"{system}: {n} processes started, waiting for every one to list every other")
        names = fleet.names
        full: dt.datetime | None = None
        with trio.move_on_after(120 + 2 * n):
            while full is None:
                await trio.sleep(2.0)
                full = _full_view_at(await fleet.events(names), names)
        if full is None:
            evs = await fleet.events(names)
            listed = {p: len({e.node for e in evs[p] if e.kind == "up"}) for p in names}
            counts = sorted(listed.values())
            out["full_view_s"] = None
            out["listed_counts_min_median"] = [counts[0], counts[len(counts) // 2]]
            out["listing_none"] = sum(1 for c in counts if c == 0)
            if not fleet.serf:
                out["diagnostics"] = await _diagnose(fleet, names, listed)
            say(f"{system}: no full view (fewest listed: {counts[0]})")
            return out
        if fleet.serf:
            out["times_resolution_s"] = 1.0
        out["full_view_s"] = round((full - started).total_seconds(), 1)
        if not fleet.serf:
            # How much of it was starting processes (the interpreter and imports, on a machine
            # whose cores the other peers share) and how much was joining after the last one
            # listened. Serf's log gives no such line.
            last = _last_listening(await fleet.events(names))
            if last is not None:
                out["all_listening_s"] = round((last - started).total_seconds(), 1)
                out["full_view_after_all_listening_s"] = round((full - last).total_seconds(), 1)
        say(
            f"{system}: full view after {out['full_view_s']} s; settling, then {window:.0f} s quiet"
        )
        await trio.sleep(10.0)

        quiet_from = fleet.stamp(dt.datetime.now(), until=True)
        cpu0, bytes0, t0 = fleet.cpu_seconds(), await fleet.bytes_out(), trio.current_time()
        await trio.sleep(window)
        cpu1, bytes1, t1 = fleet.cpu_seconds(), await fleet.bytes_out(), trio.current_time()
        cpu = [(cpu1[x] - cpu0[x]) / (t1 - t0) * 100 for x in names if x in cpu0 and x in cpu1]
        out["cpu_percent_per_peer"] = round(sum(cpu) / len(cpu), 3)
        out["cpu_percent_total"] = round(sum(cpu), 1)
        sent = [(bytes1[x] - bytes0[x]) / (t1 - t0) for x in names if x in bytes0 and x in bytes1]
        out["bytes_per_peer_per_s"] = round(sum(sent) / len(sent)) if sent else None
        evs = await fleet.events(names)
        false = [
            (p, e.node) for p in names for e in evs[p] if e.kind == "down" and e.at >= quiet_from
        ]
        out["quiet_window_s"] = window
        out["false_downs"] = len(false)

        victim = random.Random(seed).choice(names[1:])
        killed = fleet.stamp(dt.datetime.now())
        fleet.kill(victim)
        survivors = [x for x in names if x != victim]
        say(f"{system}: SIGKILL {victim}")
        downs: list[dt.datetime | None] = []
        with trio.move_on_after(90):
            while True:
                await trio.sleep(1.0)
                evs = await fleet.events(survivors)
                downs = [_first(evs[p], "down", victim, killed) for p in survivors]
                if all(downs):
                    break
        seen = [d for d in downs if d is not None]
        out["sigkill_down_at_all_s"] = (
            round((max(seen) - killed).total_seconds(), 1) if len(seen) == len(survivors) else None
        )
        out["sigkill_seen_by"] = f"{len(seen)}/{len(survivors)}"
        return out
    finally:
        fleet.stop()


async def bench_gossip(
    n: int,
    window: float,
    spacing: float,
    seed: int,
    *,
    compare_serf: bool,
    quiet: bool,
) -> dict[str, Any]:
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    result: dict[str, Any] = {"gossipkv": await measure("gossipkv", n, window, spacing, seed, say)}
    if compare_serf:
        if shutil.which("serf") is None:
            result["serf"] = {"error": "serf is not on PATH (Debian/Ubuntu: apt-get install serf)"}
        else:
            result["serf"] = await measure("serf", n, window, spacing, seed, say)
            ours = result["gossipkv"].get("cpu_percent_per_peer")
            theirs = result["serf"].get("cpu_percent_per_peer")
            if ours is not None and theirs:
                result["cpu_ratio_gossipkv_to_serf"] = round(ours / theirs, 2)
    return result
