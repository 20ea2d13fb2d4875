"""Run every issue-10 attack once, each against a fresh cluster, and print the figures.

    python -m tests.abuse.report                 # from the repository root; a Markdown table
    python -m tests.abuse.report --only watch_flood --only deep_value
    python -m tests.abuse.report --json          # the raw figures, one JSON document

For each attack: the idle and peak RSS of every peer (sampled every 50 ms during and after the
attack), the largest event-loop lag each peer reports (``max_loop_lag`` in ``stats``), the
refusal counters that grew (``dropped_frames``, ``refusals``, ``refused_handshakes``,
``kv_errors``), and the outcome: what the attacker saw, then ``ok`` or the invariants that broke
(the same checks as the test tier: processes alive, acknowledged writes on every replica, RSS
within ``_expect.rss_bound``, no false downs, the expected counter). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``tests.abuse`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cbor2
import trio

import gossipkv
from tests.abuse import _expect, _scenarios
from tests.abuse._attack import (
    HINT_SEP,
    UNREADABLE_CLOCKS,
    context_pairs,
    forged_context,
    nested,
    plant_records,
)
from tests.abuse._cluster import Cluster, Observation, client_of, mib, observing
from tests.abuse._invariants import (
    Acked,
    assert_acked,
    assert_alive,
    assert_counted,
    assert_no_false_downs,
    assert_rss_bounded,
    counter_deltas,
    local_read,
    write_around,
    write_before,
)
from tests.proc._peers import members


@dataclass
class Row:
    attack: str
    idle: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    lag_ms: dict[str, float] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)
    seen: str = ""
    broken: list[str] = field(default_factory=list)


@dataclass
class Seen:
    """What an attack saw: a note, the outbound attacking connections per peer (for the RSS
    bound), the ``_expect.COUNTERS`` entry to expect ("" for none) and what it found broken."""

    note: str
    outbound: dict[str, int] = field(default_factory=dict)
    counter: str = ""
    broken: list[str] = field(default_factory=list)


Attack = Callable[[Cluster, Acked], Awaitable[Seen]]


async def _put(addr: str, key: str, value: Any, **kw: Any) -> str:
    async with client_of(addr) as c:
        try:
            await c.put(key, value, **kw)
            return "ok"
        except gossipkv.GossipKVError as exc:
            return f"{type(exc).__name__}"


# --- data damage ---------------------------------------------------------------------------------


async def deep_value(cluster: Cluster, acked: Acked) -> Seen:
    async with client_of(cluster.addrs[0]) as c:
        await acked.put(c, "deep", "before", w=3)
    seen = [
        f"{d}: {await _put(addr, 'deep', nested(d))}"
        for d, addr in zip((61, 62, 63), cluster.addrs, strict=True)
    ]
    return Seen("; ".join(seen), counter="deep_value")


async def forged_counter(cluster: Cluster, acked: Acked) -> Seen:
    async with client_of(cluster.addrs[0]) as c:
        first = await acked.put(c, "forged", "v1", w=3)
    async with client_of(cluster.addrs[1]) as c:
        await acked.put(c, "forged", "v2", w=3)
    (actor, _), *_ = context_pairs(first.context)
    seen = await _put(cluster.addrs[0], "forged", "x", context=forged_context([(actor, 2**64 - 1)]))
    if seen == "ok":
        acked.forget("forged", "v1")
    return Seen(f"put: {seen}", counter="forged_counter" if seen != "ok" else "")


async def made_up_actors(cluster: Cluster, acked: Acked) -> Seen:
    async with client_of(cluster.addrs[0]) as c:
        first = await acked.put(c, "actors", "v1", w=3)
    fake = [(f"made-up-{i:05d}", 1) for i in range(10_000)]
    ctx = forged_context(context_pairs(first.context) + fake)
    seen = await _put(cluster.addrs[1], "actors", "m2", context=ctx, w=3)
    if seen == "ok":
        acked.forget("actors", "v1")
        acked.add("actors", "m2")
    kept = []
    for name in cluster.names:
        got = await local_read(cluster.addr(name), "actors")
        if not isinstance(got, str):
            kept.append(sum(a.startswith("made-up") for a, _ in context_pairs(got.context)))
    return Seen(
        f"put: {seen}; made-up actors stored per replica: {kept}",
        counter="made_up_actors" if seen != "ok" else "",
        broken=["made-up actors stored"] if any(kept) else [],
    )


async def big_key(cluster: Cluster, acked: Acked) -> Seen:
    outcomes: dict[str, int] = {}
    for i in range(20):
        value = bytes([i]) * (2**20 - 100)
        seen = await _put(cluster.addrs[i % 3], "big", value)
        outcomes[seen] = outcomes.get(seen, 0) + 1
        if seen == "ok":
            acked.add("big", value)
    return Seen(f"20 puts of ~1 MiB: {outcomes}", counter="record_too_large")


async def sibling_storm(cluster: Cluster, acked: Acked) -> Seen:
    outcomes: dict[str, int] = {}

    async def one(i: int) -> None:
        async with client_of(cluster.addrs[i % 3]) as c:
            try:
                await acked.put(c, "storm", f"s{i}")
                key = "ok"
            except gossipkv.GossipKVError as exc:
                key = type(exc).__name__
            outcomes[key] = outcomes.get(key, 0) + 1

    async with trio.open_nursery() as nursery:
        for i in range(180):
            nursery.start_soon(one, i)
    sizes = {}
    async with client_of(cluster.addrs[0]) as c:
        for r in (1, 2, 3):
            sizes[f"r={r}"] = len((await c.get("storm", r=r)).values)
    # Only the values a read can show are checked by the generic invariants (the cap is 100).
    acked.values.pop("storm", None)
    over = [f"a read returned {n} siblings" for n in sizes.values() if n > _expect.MAX_SIBLINGS]
    return Seen(f"180 concurrent puts: {outcomes}; siblings read: {sizes}", broken=over[-1:])


async def exact_mib(cluster: Cluster, acked: Acked) -> Seen:
    exact = b"x" * (_expect.MAX_VALUE_BYTES - 5)
    assert len(cbor2.dumps(exact)) == _expect.MAX_VALUE_BYTES
    seen = await _put(cluster.addrs[0], "exact", exact, w=3)
    if seen == "ok":
        acked.add("exact", exact)
    over = await _put(cluster.addrs[0], "exact-over", b"y" * (_expect.MAX_VALUE_BYTES - 4))
    return Seen(
        f"1 MiB encoded: {seen}; 1 MiB + 1: {over}",
        counter="value_too_large",
        broken=[] if seen == "ok" else ["a value of exactly 1 MiB refused"],
    )


async def disk_records(cluster: Cluster, acked: Acked) -> Seen:
    victim, owner = cluster.names[2], cluster.names[0]
    async with client_of(cluster.addr(owner)) as c:
        for kind in UNREADABLE_CLOCKS:
            await acked.put(c, f"disk-{kind}", kind, w=3)
        await acked.put(c, "disk-hinted", "hinted", w=3)
    cluster.signal(victim, signal.SIGKILL)
    await cluster.wait_exit(victim)
    plant_records(
        cluster.data_dir(victim) / "data",
        {f"disk-{kind}": raw for kind, raw in UNREADABLE_CLOCKS.items()},
    )
    plant_records(
        cluster.data_dir(victim) / "hints",
        {f"{owner}{HINT_SEP}disk-hinted": UNREADABLE_CLOCKS["too_deep"]},
    )
    cluster.start_peer(victim)
    with trio.move_on_after(15):
        while victim in cluster.alive() and not await cluster.is_formed():  # noqa: ASYNC110
            await trio.sleep(0.2)
    code = cluster.peers.procs[victim].poll()
    return Seen(f"restart on damaged data dir: {'serving' if code is None else f'exit {code}'}")


async def crash_loop(cluster: Cluster, acked: Acked) -> Seen:
    leader = cluster.names[0]
    async with client_of(cluster.addr(leader)) as c:
        for i in range(32):
            key = f"loop-{i}"
            await acked.put(c, key, "before", w=3)
            holders = []
            for name in cluster.names:
                got = await local_read(cluster.addr(name), key)
                if not isinstance(got, str) and got.found:
                    holders.append(name)
            if leader in holders:
                break
    owner = next(n for n in reversed(holders) if n != leader)
    (stand_in,) = [n for n in cluster.names if n not in holders]
    cluster.signal(owner, signal.SIGSTOP)
    try:
        with trio.move_on_after(30):
            while True:
                doc = await members(cluster.addr(leader))
                if doc and not next(m for m in doc["members"] if m["name"] == owner)["reachable"]:
                    break
                await trio.sleep(0.2)
        seen = await _put(cluster.addr(stand_in), key, nested(62))
        cluster.signal(stand_in, signal.SIGTERM)
        await cluster.wait_exit(stand_in)
        cluster.start_peer(stand_in)
        with trio.move_on_after(10):
            while stand_in in cluster.alive():
                doc = await members(cluster.addr(stand_in))
                if doc is not None:
                    break
                await trio.sleep(0.2)
        code = cluster.peers.procs[stand_in].poll()
    finally:
        cluster.signal(owner, signal.SIGCONT)
    if code is None:
        await cluster.wait_ready()
    restart = "serving" if code is None else f"exit {code}"
    return Seen(
        f"hinted 62-deep put: {seen}; stand-in restart: {restart}",
        broken=[] if code is None else ["the stand-in cannot restart"],
    )


# --- memory and connections ----------------------------------------------------------------------


def _memory(scenario: Any, name: str, *args: Any) -> Attack:
    async def attack(cluster: Cluster, acked: Acked) -> Seen:
        target = cluster.names[1]
        if args:
            async with client_of(cluster.addrs[0]) as c:
                await acked.put(c, args[-1], b"v" * _scenarios.UNREAD_VALUE_BYTES, w=3)
        async with trio.open_nursery() as background:
            background.start_soon(write_around, cluster, acked, name)
            async with scenario(cluster.addr(target), *args) as out:
                if scenario is _scenarios.watch_flood:
                    failed = await _scenarios.watched_writes(cluster.addrs[0], acked)
                    out.notes["watched_puts_failed"] = failed
                await trio.sleep(1.0)
            background.cancel_scope.cancel()
        return Seen(out.text(), {target: out.outbound}, name)

    return attack


ATTACKS: dict[str, tuple[int, Attack]] = {
    "deep_value": (3, deep_value),
    "forged_counter": (3, forged_counter),
    "made_up_actors": (3, made_up_actors),
    "record_too_large": (3, big_key),
    "sibling_storm": (3, sibling_storm),
    "value_too_large": (3, exact_mib),
    "unreadable_records": (3, disk_records),
    "crash_loop": (4, crash_loop),
    "big_frame_before_hello": (3, _memory(_scenarios.big_frame_before_hello, "big_frame_before_hello")),
    "half_sent_frames": (3, _memory(_scenarios.half_sent_frames, "half_sent_frames")),
    "unread_replies_x4": (3, _memory(_scenarios.unread_gets, "unread_replies", 4, "unread-1mib")),
    "unread_replies_x8": (3, _memory(_scenarios.unread_gets, "unread_replies", 8, "unread-1mib")),
    "connection_flood": (3, _memory(_scenarios.connection_flood, "connection_flood")),
    "watch_flood": (3, _memory(_scenarios.watch_flood, "watch_flood")),
}  # fmt: skip


async def _check(label: str, broken: list[str], check: Awaitable[Any] | Callable[[], Any]) -> None:
    try:
        if callable(check):
            check()
        else:
            await check
    except AssertionError as exc:
        broken.append(f"{label}: {' '.join(str(exc).split())[:200]}")


async def run_attack(root: Path, name: str) -> Row:
    size, attack = ATTACKS[name]
    cluster = Cluster(root / name, size)
    cluster.start()
    row = Row(name)
    try:
        await cluster.wait_ready()
        await cluster.warm_up_and_measure()
        row.idle = dict(cluster.idle_rss)
        acked = Acked()
        await write_before(cluster, acked, name.replace("_", "-"), count=5)
        before = await cluster.stats()
        obs: Observation
        async with observing(cluster) as obs:
            try:
                seen = await attack(cluster, acked)
            except (AssertionError, gossipkv.GossipKVError, ExceptionGroup) as exc:
                seen = Seen(f"attack failed: {exc!r}"[:200])
        row.seen = seen.note
        row.broken.extend(seen.broken)
        outbound, counter = seen.outbound, seen.counter
        after = await cluster.stats()
        row.peak = dict(obs.rss.peak)
        row.lag_ms = {n: round(float(s.get("max_loop_lag") or 0) * 1000) for n, s in after.items()}
        row.counters = counter_deltas(before, after)
        await _check("alive", row.broken, lambda: assert_alive(cluster))
        if name != "crash_loop":  # it freezes a peer on purpose
            await _check("false downs", row.broken, lambda: assert_no_false_downs(obs))
        await _check("RSS", row.broken, lambda: assert_rss_bounded(cluster, obs.rss.peak, outbound))
        if counter and _expect.COUNTERS.get(counter):
            await _check("counter", row.broken, assert_counted(cluster, before, counter, within=2))
        if cluster.alive() == cluster.names:
            await _check("acknowledged", row.broken, assert_acked(cluster, acked, within=10))
    finally:
        cluster.kill_all()
    return row


def print_table(rows: list[Row]) -> None:
    print("| attack | idle RSS | peak RSS | max loop lag | counters | outcome |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        idle = " ".join(mib(v) for v in r.idle.values())
        peak = " ".join(mib(v) for v in r.peak.values())
        lag = " ".join(f"{v} ms" for v in r.lag_ms.values())
        counters = "; ".join(
            f"{section}: " + ", ".join(f"{k} {v}" for k, v in reasons.items())
            for section, reasons in r.counters.items()
        )
        outcome = r.seen + (" — " + "; ".join(r.broken) if r.broken else " — ok")
        print(f"| {r.attack} | {idle} | {peak} | {lag} | {counters or '-'} | {outcome} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(ATTACKS), default=None)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    names = args.only or list(ATTACKS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gossipkv-abuse-") as tmp:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows.append(trio.run(run_attack, Path(tmp), name))
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
