"""``gossipkv bench gossip``: membership timings measured on real peer processes on loopback.

Peers log every membership event with a millisecond wall-clock timestamp; the benchmark starts
them, acts (start one more, SIGKILL one, load the machine) and reads the timings back from the
logs, so measuring adds no traffic of its own.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import typer

from ._launcher import LocalCluster, free_base_port

_EVENT = re.compile(r"^(\S+ \S+) INFO gossipkv\.node: event (\w+) (\S+) ")


@dataclass(frozen=True)
class Event:
    at: dt.datetime
    kind: str
    node: str


def read_events(path: Path) -> list[Event]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        m = _EVENT.match(line)
        if m:
            at = dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
            out.append(Event(at, m.group(2), m.group(3)))
    return out


def first(events: list[Event], kind: str, node: str, after: dt.datetime) -> dt.datetime | None:
    for e in events:
        if e.kind == kind and e.node == node and e.at >= after:
            return e.at
    return None


def seconds(a: dt.datetime, b: dt.datetime | None) -> float | None:
    return None if b is None else round((b - a).total_seconds(), 3)


async def bench_gossip(n: int, busy_seconds: float, seed: int, *, quiet: bool) -> dict[str, Any]:
    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    base = free_base_port("127.0.0.1", n + 1, 7700)
    local = LocalCluster(
        n, host="127.0.0.1", base_port=base, data_root=None, cluster="bench", say=say
    )
    logs = local.log_dir
    names = [f"n{i}" for i in range(1, n + 1)]
    result: dict[str, Any] = {"peers": n}
    extra: subprocess.Popen[bytes] | None = None
    burners: list[subprocess.Popen[bytes]] = []
    try:
        async with trio.open_nursery() as nursery:
            started = dt.datetime.now()
            await local.start(nursery)
            doc = await local.wait_all_up(within=60.0)
            if doc is None:
                raise typer.Exit(1)
            await trio.sleep(3.0)
            ev = {name: read_events(logs / f"{name}.log") for name in names}
            last_up = max(
                first(ev[p], "up", q, started) or dt.datetime.max
                for p in names
                for q in names
                if p != q
            )
            result["all_up_after_start_s"] = seconds(started, last_up)
            say(f"all {n} peers up")

            # One more peer: how long until everyone lists it, and sees it up.
            await trio.sleep(5.0)
            extra_name = f"n{n + 1}"
            extra_addr = f"127.0.0.1:{base + n}"
            log_file = open(logs / f"{extra_name}.log", "ab")  # noqa: SIM115, ASYNC230
            spawned = dt.datetime.now()
            # Popen only forks and execs; it does not wait, so it does not stall the loop.
            extra = subprocess.Popen(  # noqa: ASYNC220
                [
                    sys.executable,
                    "-m",
                    "gossipkv_cli",
                    "peer",
                    "--name",
                    extra_name,
                    "--listen",
                    extra_addr,
                    "--seed",
                    local.addresses()[0],
                    "--cluster",
                    "bench",
                ],
                stdout=log_file,
                stderr=log_file,
                stdin=subprocess.DEVNULL,
            )
            log_file.close()
            await trio.sleep(6.0)
            ev = {name: read_events(logs / f"{name}.log") for name in names}
            listed = [first(ev[p], "joined", extra_name, spawned) for p in names]
            upped = [first(ev[p], "up", extra_name, spawned) for p in names]
            result["new_peer_listed_by_all_s"] = (
                None if None in listed else seconds(spawned, max(t for t in listed if t))
            )
            result["new_peer_up_at_all_s"] = (
                None if None in upped else seconds(spawned, max(t for t in upped if t))
            )
            say("new peer measured")

            # SIGKILL one peer that is not the leader: how long until every other sees it down.
            await trio.sleep(10.0)
            victim = random.Random(seed).choice(names[1:])
            proc = next(p for p in local.peers if p.name == victim)
            proc.expected_exit = True
            killed = dt.datetime.now()
            proc.process.send_signal(signal.SIGKILL)
            await trio.sleep(15.0)
            survivors = [p for p in names if p != victim] + [extra_name]
            ev = {name: read_events(logs / f"{name}.log") for name in survivors}
            downs = [first(ev[p], "down", victim, killed) for p in survivors]
            result["sigkill_down_at_all_s"] = (
                None if None in downs else seconds(killed, max(t for t in downs if t))
            )
            result["sigkill_down_first_s"] = (
                None if None in downs else seconds(killed, min(t for t in downs if t))
            )
            say(f"{victim} killed and detected")

            # Load the machine and count false downs among the live peers.
            cores = os.cpu_count() or 2
            burners = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])  # noqa: ASYNC220
                for _ in range(cores)
            ]
            busy_from = dt.datetime.now()
            await trio.sleep(busy_seconds)
            for b in burners:
                b.kill()
            ev = {name: read_events(logs / f"{name}.log") for name in survivors}
            false = [
                f"{p} saw {e.node} down"
                for p in survivors
                for e in ev[p]
                if e.kind == "down" and e.at >= busy_from and e.node != victim
            ]
            result["busy_seconds"] = busy_seconds
            result["busy_burner_processes"] = cores
            result["false_downs_while_busy"] = len(false)
            if false:
                result["false_down_examples"] = false[:5]
            nursery.cancel_scope.cancel()
    finally:
        for b in burners:
            if b.poll() is None:
                b.kill()
        if extra is not None and extra.poll() is None:
            extra.kill()
            extra.wait()
        with trio.move_on_after(30, shield=True):
            await local.stop(grace=2.0)
    result["logs"] = str(logs)
    return result
