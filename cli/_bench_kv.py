"""``gossipkv bench kv``: a closed-loop get/put load generator against running peers.

C Trio tasks share one client per ``--peer`` (each client tries its own peer first and fails over
to the others); each task loops for ``--duration`` seconds: pick get or put by ``--ratio``, a key
among ``--keys`` (a seeded ``random.Random``), time the call. Puts write a ``--value-size`` string
with the newest context the bench has seen for the key, so keys do not pile up siblings.
``--baseline-echo`` then drives a bare Trio + CBOR echo server (in its own process) with the same
concurrency, connections, duration and value size, and reports the ratio to that Python ceiling.
Numbers, never pass/fail.
"""

from __future__ import annotations

import contextlib
import math
import random
import string
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import trio
import typer
from rich.progress import Progress

import gossipkv
from gossipkv.testing import open_echo_client, open_echo_server_process

from ._common import fail, open_client, until_interrupted

_ERROR_PAUSE = 0.01  # after a failed op, so a dead peer does not turn a task into a busy loop
_PROBE_KEY = "gossipkv-bench-probe"


#: Distinct error messages kept per error kind (the report shows what went wrong, bounded).
_MESSAGES_PER_KIND = 3


@dataclass
class _Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    messages: dict[str, list[str]] = field(default_factory=dict)

    def error(self, exc: gossipkv.GossipKVError) -> None:
        """Count ``exc`` by kind (a remote error by its wire code) and keep a few messages."""
        kind = type(exc).__name__
        if isinstance(exc, gossipkv.RemoteError):
            kind = f"{kind}({exc.code})"
        self.errors[kind] += 1
        seen = self.messages.setdefault(kind, [])
        text = str(exc) or kind
        if text not in seen and len(seen) < _MESSAGES_PER_KIND:
            seen.append(text)

    def record(self, op: str, seconds: float) -> None:
        self.latencies.setdefault(op, []).append(seconds * 1000.0)

    @property
    def ops(self) -> int:
        return sum(len(v) for v in self.latencies.values())


def _percentile(sorted_ms: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_ms:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def _summary(latencies_ms: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies_ms)
    return {
        "count": len(ordered),
        "p50_ms": round(_percentile(ordered, 50), 3),
        "p95_ms": round(_percentile(ordered, 95), 3),
        "p99_ms": round(_percentile(ordered, 99), 3),
        "max_ms": round(ordered[-1], 3) if ordered else 0.0,
    }


def parse_ratio(text: str) -> tuple[int, int]:
    """``"GET:PUT"`` as two non-negative integers, not both zero."""
    parts = text.split(":")
    try:
        gets, puts = (int(p) for p in parts)
    except ValueError:
        fail(f"--ratio must be GET:PUT with non-negative integers (e.g. 50:50), got {text!r}")
    if gets < 0 or puts < 0 or gets + puts == 0:
        fail(f"--ratio must be GET:PUT with non-negative integers, not both 0, got {text!r}")
    return gets, puts


def check_peer(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        fail(f"--peer must be HOST:PORT, got {text!r}")
    return text


async def _drive(
    concurrency: int,
    duration: float,
    op: Callable[[int, random.Random], Awaitable[str]],
    seed: int,
    stats: _Stats,
    progress: Progress | None,
    label: str,
) -> float:
    """Run ``op`` from ``concurrency`` tasks until ``duration`` has passed; returns the elapsed time.

    ``op(task_index, rng)`` does one operation and returns its name; a GossipKVError is counted by
    type. Operations in flight at the deadline finish and count (nothing is cancelled).
    """
    started = trio.current_time()
    deadline = started + duration
    task = progress.add_task(label, total=duration) if progress is not None else None

    async def worker(index: int) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        while trio.current_time() < deadline:
            t0 = trio.current_time()
            try:
                name = await op(index, rng)
            except gossipkv.GossipKVError as exc:
                stats.error(exc)
                await trio.sleep(_ERROR_PAUSE)
                continue
            stats.record(name, trio.current_time() - t0)

    async def show() -> None:
        assert progress is not None and task is not None
        while True:
            elapsed = trio.current_time() - started
            progress.update(
                task,
                completed=min(elapsed, duration),
                description=f"{label}: {stats.ops} ops, {sum(stats.errors.values())} errors",
            )
            progress.refresh()
            await trio.sleep(0.2)

    async with trio.open_nursery() as outer:
        if progress is not None:
            outer.start_soon(show)
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(worker, i)
        outer.cancel_scope.cancel()
    elapsed = trio.current_time() - started
    if progress is not None and task is not None:
        progress.update(task, completed=duration)
        progress.refresh()
    return elapsed


#: Seconds the deletion of the bench's keys may take at the end of a run.
_CLEANUP_SECONDS = 60.0


async def _delete_keys(client: gossipkv.Client, keys: list[str], concurrency: int) -> int:
    """Delete ``keys`` (read each for its context, then write a tombstone over what it saw);
    returns how many were deleted. A key that fails is left (and not counted)."""
    done = 0
    pending = iter(keys)

    async def worker() -> None:
        nonlocal done
        for key in pending:
            try:
                got = await client.get(key)
                if got.found:
                    await client.delete(key, context=got.context)
                done += 1
            except gossipkv.GossipKVError:
                continue

    async with trio.open_nursery() as nursery:
        for _ in range(max(1, min(concurrency, len(keys)))):
            nursery.start_soon(worker)
    return done


def _values(rng: random.Random, size: int, count: int = 16) -> list[str]:
    alphabet = string.ascii_letters + string.digits
    return ["".join(rng.choices(alphabet, k=size)) for _ in range(count)]


async def _probe(peers: Sequence[str], cluster: str) -> None:
    """Fail with one line unless every peer answers a read (reachable, same cluster, ready)."""
    for peer in peers:
        problem: str | None = None
        try:
            async with open_client([peer], cluster=cluster, request_timeout=5.0) as c:
                await c.get(_PROBE_KEY)
        except gossipkv.ClusterNotReady as exc:
            problem = f"peer {peer}: cluster not ready ({exc})"
        except gossipkv.TransportError as exc:
            problem = f"peer {peer} unreachable: {exc}"
        except gossipkv.GossipKVError as exc:
            problem = f"peer {peer}: {exc}"
        if problem is not None:
            # Outside the client's nursery, so the exit is not wrapped in an exception group.
            fail(problem)


async def run_kv_bench(
    peers: Sequence[str], *, progress: Progress | None, **options: Any
) -> dict[str, Any]:
    """Run the benchmark in the current Trio run (see the module docstring).

    ``options`` are :func:`_run_kv_bench`'s keyword arguments.
    """
    await _probe(peers, options["cluster"])
    # The bar starts only now, so a failed probe prints just its error line.
    with progress if progress is not None else contextlib.nullcontext():
        return await _run_kv_bench(peers, progress=progress, **options)


async def _run_kv_bench(
    peers: Sequence[str],
    *,
    cluster: str,
    duration: float,
    concurrency: int,
    ratio: tuple[int, int],
    keys: int,
    value_size: int,
    r: int,
    w: int,
    seed: int,
    baseline_echo: bool,
    progress: Progress | None,
) -> dict[str, Any]:
    rng = random.Random(seed)
    values = _values(rng, value_size)
    key_names = [f"bench:{i:08d}" for i in range(keys)]
    contexts: dict[str, bytes] = {}
    written: set[str] = set()
    gets, puts = ratio
    put_share = puts / (gets + puts)

    stats = _Stats()
    async with AsyncExitStack() as stack:
        # One client per peer, each starting at its own peer and failing over to the others.
        clients = [
            await stack.enter_async_context(open_client([*peers[i:], *peers[:i]], cluster=cluster))
            for i in range(len(peers))
        ]

        async def kv_op(index: int, task_rng: random.Random) -> str:
            client = clients[index % len(clients)]
            key = key_names[task_rng.randrange(keys)]
            if task_rng.random() < put_share:
                value = values[task_rng.randrange(len(values))]
                written.add(key)  # before the call: a put that timed out may still have landed
                put_res = await client.put(key, value, context=contexts.get(key), w=w)
                contexts[key] = put_res.context
                return "put"
            get_res = await client.get(key, r=r)
            contexts[key] = get_res.context
            return "get"

        started = trio.current_time()
        # Ctrl-C or SIGTERM stops the load, not the run: the keys are still cleaned up.
        interrupted = await until_interrupted(
            lambda: _drive(concurrency, duration, kv_op, seed, stats, progress, "kv")
        )
        elapsed = trio.current_time() - started
        with trio.move_on_after(_CLEANUP_SECONDS) as cleanup:
            cleaned = await _delete_keys(clients[0], sorted(written), concurrency)
        if cleanup.cancelled_caught:
            cleaned = -1

    ops = stats.ops
    result: dict[str, Any] = {
        "ops": ops,
        "ops_per_s": round(ops / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": sum(stats.errors.values()),
        "errors_by_type": dict(sorted(stats.errors.items())),
        "error_messages": dict(sorted(stats.messages.items())),
        "keys_cleaned": cleaned,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 3),
        "get": _summary(stats.latencies.get("get", [])),
        "put": _summary(stats.latencies.get("put", [])),
        "config": {
            "peers": list(peers),
            "duration_s": duration,
            "concurrency": concurrency,
            "ratio": f"{gets}:{puts}",
            "keys": keys,
            "value_size": value_size,
            "r": r or None,  # None: the peer's default
            "w": w or None,
            "clients": len(peers),
        },
    }
    if baseline_echo and not interrupted:
        result["echo"] = await _echo_bench(
            connections=len(peers),
            duration=duration,
            concurrency=concurrency,
            values=values,
            seed=seed,
            progress=progress,
        )
        echo_rate = result["echo"]["ops_per_s"]
        result["ratio_to_echo"] = round(result["ops_per_s"] / echo_rate, 3) if echo_rate else None
    return result


async def _echo_bench(
    *,
    connections: int,
    duration: float,
    concurrency: int,
    values: list[str],
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    stats = _Stats()
    async with open_echo_server_process() as address, AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(open_echo_client(address)) for _ in range(connections)
        ]

        async def echo_op(index: int, task_rng: random.Random) -> str:
            await clients[index % len(clients)].echo(values[task_rng.randrange(len(values))])
            return "echo"

        elapsed = await _drive(concurrency, duration, echo_op, seed, stats, progress, "echo")
    ops = stats.ops
    return {
        "ops_per_s": round(ops / elapsed, 1) if elapsed > 0 else 0.0,
        "errors": sum(stats.errors.values()),
        **_summary(stats.latencies.get("echo", [])),
    }


def print_human(result: dict[str, Any]) -> None:
    typer.echo(
        f"kv: {result['ops']} ops in {result['elapsed_s']} s = {result['ops_per_s']} ops/s, "
        f"{result['errors']} errors {result['errors_by_type'] or ''}".rstrip()
    )
    for kind, messages in result.get("error_messages", {}).items():
        for message in messages:
            typer.echo(f"  {kind}: {message}")
    sections = ["get", "put"] + (["echo"] if "echo" in result else [])
    for name in sections:
        s = result[name]
        rate = f"  {s['ops_per_s']} ops/s" if "ops_per_s" in s else ""
        typer.echo(
            f"{name:>5}: {s['count']:>8} ops  p50 {s['p50_ms']:.2f}  p95 {s['p95_ms']:.2f}  "
            f"p99 {s['p99_ms']:.2f}  max {s['max_ms']:.2f} ms{rate}"
        )
    if "ratio_to_echo" in result:
        typer.echo(f"kv / echo throughput: {result['ratio_to_echo']}")
    cleaned = result.get("keys_cleaned")
    if cleaned == -1:
        typer.echo("bench keys: cleanup did not finish; some bench:* keys remain")
    elif cleaned is not None:
        typer.echo(f"bench keys: {cleaned} deleted (tombstones until the peers reap them)")
