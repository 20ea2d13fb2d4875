"""``gossipkv bench``: the three benchmark commands, their options and their output.

Only the commands live here; each imports its benchmark module (trio, rich, gossipkv) when it
runs, so ``gossipkv --help`` and shell completion never pay for them.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import (
    DEFAULT_PEER,
    ClusterOption,
    TlsDirOption,
    TlsNameOption,
    fail,
    print_json,
    run,
    sub_app,
    until_interrupted,
)

if TYPE_CHECKING:
    from rich.progress import Progress

bench_app = sub_app("Benchmarks (numbers, never pass/fail).")


@bench_app.command("gossip")
def gossip(
    n: Annotated[int, typer.Option("-n", min=2, help="Number of peers.")] = 10,
    window: Annotated[
        float,
        typer.Option(
            min=5.0,
            max=300.0,
            help="Seconds of the quiet window in which CPU, bytes and false downs are measured.",
        ),
    ] = 60.0,
    spacing: Annotated[
        float, typer.Option(min=0.0, help="Seconds between the starts of two peers.")
    ] = 0.02,
    compare_serf: Annotated[
        bool,
        typer.Option(
            "--compare-serf", help="Run the same with Serf agents (serf on PATH), side by side."
        ),
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for the choice of the peer killed.")] = 1,
) -> None:
    """Membership at scale on N real peers on loopback: time to a full view, CPU and bytes per
    peer at rest, false downs, SIGKILL detection (optionally beside Serf)."""
    from ._bench_gossip import bench_gossip

    result = run(
        lambda: bench_gossip(n, window, spacing, seed, compare_serf=compare_serf, quiet=json)
    )
    if json:
        print_json(result)
        return
    systems = [k for k in ("gossipkv", "serf") if isinstance(result.get(k), dict)]
    keys = list(dict.fromkeys(k for s in systems for k in result[s] if k != "system"))
    typer.echo(f"{'':>26}" + "".join(f"{s:>22}" for s in systems))
    for key in keys:
        row = "".join(f"{result[s].get(key, '')!s:>22}" for s in systems)
        typer.echo(f"{key:>26}{row}")
    if "cpu_ratio_gossipkv_to_serf" in result:
        typer.echo(f"{'cpu ratio gossipkv/serf':>26}{result['cpu_ratio_gossipkv_to_serf']:>22}")


@bench_app.command("kv")
def kv(
    peer: Annotated[
        list[str],
        typer.Option(
            "--peer",
            envvar="GOSSIPKV_PEER",
            help="Peer to load, HOST:PORT (repeatable; one client per peer).",
        ),
    ] = [DEFAULT_PEER],  # noqa: B006 - typer copies list defaults
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds of load.")] = 10.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Concurrent request loops.")] = 16,
    ratio: Annotated[str, typer.Option(help="GET:PUT mix, e.g. 90:10.")] = "50:50",
    keys: Annotated[int, typer.Option(min=1, help="Number of distinct keys.")] = 1000,
    value_size: Annotated[int, typer.Option(min=0, help="Bytes per value (a string).")] = 100,
    r: Annotated[
        int,
        typer.Option("--r", min=0, help="Read quorum (default: the peer's R).", show_default=False),
    ] = 0,
    w: Annotated[
        int,
        typer.Option(
            "--w", min=0, help="Write quorum (default: the peer's W).", show_default=False
        ),
    ] = 0,
    seed: Annotated[int, typer.Option(help="Seed for keys, values and the op mix.")] = 1,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: Annotated[bool, typer.Option("--json", help="Print one JSON object only.")] = False,
    baseline_echo: Annotated[
        bool,
        typer.Option(
            "--baseline-echo", help="Also drive a bare Trio+CBOR echo server and report the ratio."
        ),
    ] = False,
) -> None:
    """Closed-loop get/put load against running peers: ops/s, latency percentiles, errors."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ._bench_kv import check_peer, parse_ratio, print_human, run_kv_bench

    peers = [check_peer(p) for p in peer]
    gets_puts = parse_ratio(ratio)
    progress: Progress | None = None
    if not json:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            auto_refresh=False,
            transient=True,
        )

    async def body() -> dict[str, Any]:
        return await run_kv_bench(
            peers,
            cluster=cluster,
            duration=duration,
            concurrency=concurrency,
            ratio=gets_puts,
            keys=keys,
            value_size=value_size,
            r=r,
            w=w,
            seed=seed,
            baseline_echo=baseline_echo,
            progress=progress,
        )

    result = run(body)
    if result.get("interrupted"):
        cleaned = result.get("keys_cleaned")
        fail(
            f"interrupted after {result['elapsed_s']} s and {result['ops']} ops; "
            + (
                "cleanup did not finish: some bench:* keys remain"
                if cleaned == -1
                else f"{cleaned} bench keys deleted"
            ),
            code=130,
        )
    if json:
        print_json(result)
    else:
        print_human(result)
    sys.stdout.flush()


@bench_app.command("storage")
def storage(
    keys: Annotated[int, typer.Option("--keys", min=1, help="Number of distinct keys.")],
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Data dir for the log engine.")],
    value_size: Annotated[int, typer.Option("--value-size", min=1, help="Bytes per value.")] = 100,
    fsync: Annotated[str, typer.Option("--fsync", help="always, batch or none.")] = "batch",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Benchmark the durable log storage engine (throughput, recovery, size, loop lag)."""
    import json
    from dataclasses import asdict

    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

    from gossipkv.storage import FsyncPolicy

    from ._bench_storage import StorageBenchResult, refuse_peer_data_dir, run_storage_bench

    policies = [p.value for p in FsyncPolicy]
    if fsync not in policies:
        typer.echo(f"error: --fsync must be one of {', '.join(policies)}, got {fsync!r}", err=True)
        raise typer.Exit(2)
    progress: Progress | None = None
    if not json_output:
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            auto_refresh=False,
            transient=True,
        )
    refuse_peer_data_dir(data_dir)

    async def body() -> StorageBenchResult:
        results: list[StorageBenchResult] = []

        async def bench() -> None:
            results.append(await run_storage_bench(keys, value_size, data_dir, fsync, progress))

        with progress if progress is not None else contextlib.nullcontext():
            # SIGINT/SIGTERM cancel the run, so the engine closes cleanly; a KeyboardInterrupt
            # raised at whatever line the signal found could leave it half-way (it hung the
            # close in 5 of 24 tries on a loaded machine).
            if await until_interrupted(bench):
                fail("interrupted", code=130)
        return results[0]

    result = run(body)
    if json_output:
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        return
    for name, value in asdict(result).items():
        typer.echo(f"{name:>26}: {value}")
