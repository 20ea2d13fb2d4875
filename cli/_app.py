"""The typer application: one sync function per command, each calling ``trio.run``.

Commands import trio, rich and gossipkv inside their bodies, never at module level, so
``gossipkv --help``, ``--version`` and shell completion start without them
(``tests/test_cli_startup.py`` checks).
"""

from __future__ import annotations

import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from ._bench import bench_app
from ._certs import certs_app
from ._common import (
    CONTEXT_SETTINGS,
    DEFAULT_PEER,
    ClusterOption,
    JsonOption,
    OneLineErrors,
    PeerOption,
    TlsDirOption,
    TlsNameOption,
    fail,
    open_client,
    print_json,
    run,
    stdout_console,
    sub_app,
    table_width,
    until_interrupted,
    use_tls,
)
from ._toolbox import register as register_toolbox
from ._where import register as register_where

if TYPE_CHECKING:
    import gossipkv

T = TypeVar("T")

app = typer.Typer(
    cls=OneLineErrors,
    context_settings=CONTEXT_SETTINGS,
    no_args_is_help=True,
    add_completion=True,
    help="gossipkv: a gossip-based, leaderless, eventually consistent key-value store.",
)
cluster_app = sub_app("Local clusters of peer processes.")
app.add_typer(bench_app, name="bench")
app.add_typer(cluster_app, name="cluster")
app.add_typer(certs_app, name="certs")
register_where(app)
register_toolbox(app)


def _installed_version() -> str:
    """The installed distribution's version, read without importing gossipkv (and trio)."""
    from importlib import metadata

    try:
        return metadata.version("gossipkv")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        import gossipkv

        return gossipkv.__version__


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gossipkv {_installed_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """gossipkv: a gossip-based, leaderless, eventually consistent key-value store."""
    use_tls(None, None)  # a command's --tls-dir sets it; nothing left from an earlier one


# --- peer ------------------------------------------------------------------------------------


@app.command()
def peer(
    ctx: typer.Context,
    listen: Annotated[str, typer.Option(help="Address to listen on, HOST:PORT.")] = DEFAULT_PEER,
    name: Annotated[
        str | None, typer.Option(help="Stable node name (default: the listen address).")
    ] = None,
    seed: Annotated[
        list[str] | None,
        typer.Option(help="Seed peer to join through (repeatable). None: start a new cluster."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep identity and state here (default: memory only).")
    ] = None,
    cluster: ClusterOption = "gossipkv",
    gossip_interval: Annotated[float, typer.Option(help="Seconds between gossip rounds.")] = 0.2,
    remove_after: Annotated[
        float,
        typer.Option(help="Seconds a member stays down or left before the leader removes it."),
    ] = 60.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    tombstone_grace: Annotated[
        float,
        typer.Option(
            help="Seconds a delete's tombstone is kept at least; then it is reaped once every "
            "owner holds it ('inf' keeps them all). Must exceed the longest outage you repair "
            "by handoff rather than by rebuilding the member."
        ),
    ] = 3600.0,
    replace: Annotated[
        str | None,
        typer.Option(
            help="Take over the partitions of this dead member (exactly those); needs --seed."
        ),
    ] = None,
    tls_dir: Annotated[
        Path | None,
        typer.Option(
            help="Mutual TLS on every connection: a directory made by gossipkv certs, holding "
            "ca.pem and this peer's NAME.pem/NAME.key."
        ),
    ] = None,
    tls_name: Annotated[
        str | None, typer.Option(help="Whose certificate in --tls-dir to use (default: --name).")
    ] = None,
    fsync: Annotated[str, typer.Option(help="always, batch or none (with --data-dir).")] = "batch",
    metrics_listen: Annotated[
        str | None,
        typer.Option(help="Serve Prometheus metrics at http://HOST:PORT/metrics."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A TOML file holding any of these options (data_dir, seed = [...], ...) and "
            "the tables [gossip], [kv], [limits], [storage_limits]; flags override it.",
        ),
    ] = None,
    parent_pid: Annotated[
        int | None, typer.Option(hidden=True, help="Leave when this process is gone.")
    ] = None,
) -> None:
    """Run a peer in the foreground. SIGTERM or Ctrl-C leaves the cluster gracefully; SIGHUP
    reloads the TLS certificates."""
    import gossipkv

    from ._config import ConfigFile, ConfigFileError, build_section, load

    file = ConfigFile()
    if config is not None:
        try:
            file = load(config)
        except ConfigFileError as exc:
            fail(str(exc))

    def from_file(option: str, value: Any) -> Any:
        """The flag's value when given (command line or environment), else the file's."""
        source = ctx.get_parameter_source(option)
        given = source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")
        if given or option not in file.options:
            return value
        return file.options[option]

    def given(option: str) -> bool:
        source = ctx.get_parameter_source(option)
        return (source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")) or (
            option in file.options
        )

    listen = from_file("listen", listen)
    name = from_file("name", name)
    seed = from_file("seed", seed)
    data_dir = from_file("data_dir", data_dir)
    data_dir = None if data_dir is None else Path(data_dir)
    cluster = from_file("cluster", cluster)
    gossip_interval = from_file("gossip_interval", gossip_interval)
    remove_after = from_file("remove_after", remove_after)
    log_level = from_file("log_level", log_level)
    tombstone_grace = from_file("tombstone_grace", tombstone_grace)
    replace = from_file("replace", replace)
    tls_dir = from_file("tls_dir", tls_dir)
    tls_dir = None if tls_dir is None else Path(tls_dir)
    tls_name = from_file("tls_name", tls_name)
    fsync = from_file("fsync", fsync)
    metrics_listen = from_file("metrics_listen", metrics_listen)

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        fail(f"unknown log level {log_level!r}")
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        tls = None
        if tls_dir is not None:
            if (tls_name or name) is None:
                fail("--tls-dir needs --name (or --tls-name): the certificate to serve with")
            tls = gossipkv.TLSConfig.from_dir(tls_dir, tls_name or name)
        # The [gossip] and [kv] tables, then the flags (or top-level keys) that were given.
        gossip_over: dict[str, Any] = {
            k: v
            for k, v in (
                ("gossip_interval", gossip_interval),
                ("remove_after", remove_after),
                ("cluster", cluster),
            )
            if given(k) or k not in file.sections.get("gossip", {})
        }
        gossip_config = build_section(file, "gossip", **gossip_over)
        kv_over = (
            {"tombstone_grace": tombstone_grace}
            if given("tombstone_grace") or "tombstone_grace" not in file.sections.get("kv", {})
            else {}
        )
        node = gossipkv.Node(
            name=name,
            listen=listen,
            seeds=list(seed or []),
            data_dir=data_dir,
            cluster=gossip_config.cluster,
            config=gossip_config,
            replace=replace,
            tls=tls,
            kv=build_section(file, "kv", **kv_over),
            limits=build_section(file, "limits"),
            storage_limits=build_section(file, "storage_limits"),
            fsync=fsync,
        )
    except (gossipkv.GossipKVError, ValueError, ConfigFileError) as exc:
        fail(str(exc))

    async def main() -> None:
        import trio

        from ._metrics import open_metrics_listeners, serve_metrics

        # Bound first: a metrics port in use is one line, before the peer joins anything.
        listeners = await open_metrics_listeners(metrics_listen) if metrics_listen else []
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:

                async def run_node(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                    await node.run(task_status=task_status)
                    nursery.cancel_scope.cancel()

                await nursery.start(run_node)
                if listeners:
                    await nursery.start(serve_metrics, node, listeners)
                if parent_pid is not None:
                    nursery.start_soon(_leave_when_orphaned, node, parent_pid)
                # What startup made (modules, the recovered state) lives as long as the peer:
                # out of the collector's sight, a full collection walks only newer objects
                # (11 ms for the CLI's imports alone, paid as an event-loop stall each time).
                gc.freeze()
                # Disk I/O runs in worker threads; one running Python (a compaction, a large
                # scan) keeps the GIL until the switch interval forces it out: 1 ms, not 5,
                # is what the event loop waits for it each time.
                sys.setswitchinterval(0.001)
                print(
                    f"peer {node.name} serving on {node.address} "
                    f"(cluster {node.config.cluster}, generation {node.generation})",
                    flush=True,
                )
                received = 0
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await trio.to_thread.run_sync(_reload_tls, node)
                        continue
                    received += 1
                    if received == 1:
                        print(
                            f"peer {node.name} leaving: handing off its data "
                            "(signal again to stop now)",
                            flush=True,
                        )
                        nursery.start_soon(_leave_or_stay, node)
                    else:
                        nursery.cancel_scope.cancel()
        print("peer stopped", flush=True)

    run(main)


def _reload_tls(node: gossipkv.Node) -> None:
    import gossipkv

    try:
        node.reload_tls()
    except gossipkv.GossipKVError as exc:
        logging.getLogger("gossipkv.node").error("SIGHUP: TLS not reloaded: %s", exc)


async def _leave_or_stay(node: gossipkv.Node) -> None:
    """Decommission on a signal; if the hand-off cannot finish, stay up and say why."""
    import gossipkv

    try:
        try:
            await node.leave()
        except gossipkv.InvalidArgument:
            # The only member in reach: there is no one to hand its data to, so a signal
            # simply stops it (its data dir keeps what it holds).
            await node.leave(force=True)
    except gossipkv.Unavailable as exc:
        print(f"peer {node.name} stays up: {exc} (signal again to stop now)", flush=True)


async def _leave_when_orphaned(node: gossipkv.Node, parent_pid: int) -> None:
    """Leave when the launching process is gone (we were re-parented)."""
    import os

    import trio

    while os.getppid() == parent_pid:  # noqa: ASYNC110 - no event exists for "parent died"
        await trio.sleep(1.0)
    print(f"peer {node.name}: launcher {parent_pid} is gone, leaving", flush=True)
    await node.leave(force=True)  # the launcher is gone: leave whatever happens


# --- operator commands ----------------------------------------------------------------------


async def _members_doc(peer_addr: str, cluster: str) -> dict[str, Any]:

    async with open_client([peer_addr], cluster=cluster) as client:
        from ._render import members_doc

        return members_doc(await client.members())


@app.command()
def members(
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """List the members a peer sees: status, reachability, age, generation, heartbeat, phi.

    Exits 3 when a member is down or unreachable (as scripts expect of a health check)."""
    doc = run(lambda: _members_doc(peer, cluster))
    if json:
        print_json(doc)
    else:
        from ._render import members_table

        console = stdout_console()
        console.print(members_table(doc, table_width(console)))
    _exit_if_degraded(doc)


#: The exit code of ``members`` and ``status`` when a member is down or unreachable.
EXIT_DEGRADED = 3


def _exit_if_degraded(members_doc: dict[str, Any]) -> None:
    """Exit with :data:`EXIT_DEGRADED` when the peer sees a member down or unreachable (members
    that left or were removed do not count)."""
    for m in members_doc.get("members", []):
        if m.get("status") in ("left", "removed"):
            continue
        if m.get("status") == "down" or not m.get("reachable", True):
            raise typer.Exit(EXIT_DEGRADED)


@app.command()
def status(
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """One-screen summary: leader, members by status, convergence, gossip counters.

    Exits 3 when a member is down or unreachable."""

    async def fetch() -> dict[str, Any]:
        from dataclasses import asdict

        from ._render import members_doc

        async with open_client([peer], cluster=cluster) as client:
            return {
                "members": members_doc(await client.members()),
                "stats": asdict(await client.statistics()),
            }

    doc = run(fetch)
    stats: dict[str, Any] = doc["stats"]
    mdoc: dict[str, Any] = doc["members"]
    if json:
        print_json(
            {
                "self": stats["name"],
                "cluster": stats["cluster"],
                "leader": stats["leader"],
                "converged": stats["converged"],
                "members_by_status": stats["members_by_status"],
                "generation": stats["generation"],
                "status": stats["status"],
                "table_epoch": stats["table_epoch"],
                "partitions": stats["partitions"],
                "replicas": stats["replicas"],
                "partitions_owned": stats["partitions_owned"],
                **effective_quorum(stats),
                "transfers": stats.get("transfers", []),
                "under_replicated": stats.get("under_replicated", 0),
                "tombstone_grace": stats.get("tombstone_grace"),
                "tombstones_pending": stats.get("tombstones_pending", 0),
                "tombstones_reaped": stats.get("tombstones_reaped", 0),
            }
        )
        _exit_if_degraded(mdoc)
        return
    from ._render import members_table

    console = stdout_console()
    console.print(
        f"[bold]{stats['cluster']}[/] via {stats['name']} ({stats['address']})  "
        f"leader: [bold]{stats['leader'] or '(none)'}[/]  "
        f"converged: {'yes' if stats['converged'] else 'no'}"
    )
    console.print(
        "members: " + "  ".join(f"{k}:{v}" for k, v in sorted(stats["members_by_status"].items()))
    )
    console.print(members_table(mdoc, table_width(console)))
    if stats["table_epoch"] is None:
        console.print("partition table: none yet (the cluster has not formed)")
    else:
        term, seq = stats["table_epoch"]
        owned = "  ".join(f"{k}:{v}" for k, v in stats["partitions_owned"].items())
        console.print(
            f"partition table epoch {term}.{seq}: {stats['partitions']} partitions   "
            f"replicas owned  {owned}"
        )
        console.print(quorum_line(stats))
    grace = stats.get("tombstone_grace")
    console.print(
        "tombstones: "
        + (f"reaped after {grace:g}s" if grace is not None else "kept (no reaping)")
        + f"  pending {stats.get('tombstones_pending', 0)}"
        + f"  reaped {stats.get('tombstones_reaped', 0)}"
        + f"  hints expired {stats.get('hints_expired', 0)}"
    )
    console.print(
        f"gossip rounds {stats['gossip_rounds']}  frames in/out {stats['frames_in']}/"
        f"{stats['frames_out']}  dropped {stats['dropped_frames'] or 0}  "
        f"max loop lag {stats['max_loop_lag'] * 1000:.1f} ms"
    )
    _exit_if_degraded(mdoc)


def effective_quorum(stats: dict[str, Any]) -> dict[str, int]:
    """N, R and W as configured and as writes really run (``effective``): a partition with
    fewer owners than N caps R and W at its owners, so a 1-member cluster runs at N=R=W=1."""
    n = int(stats["replicas"])
    n_eff = int(stats.get("replicas_effective") or n)
    r, w = int(stats.get("read_quorum") or 0), int(stats.get("write_quorum") or 0)
    return {
        "n": n,
        "r": r,
        "w": w,
        "n_effective": min(n, n_eff),
        "r_effective": min(r, n_eff),
        "w_effective": min(w, n_eff),
    }


def quorum_line(stats: dict[str, Any]) -> str:
    q = effective_quorum(stats)
    line = f"quorum: N={q['n']} R={q['r']} W={q['w']}"
    if (q["n_effective"], q["r_effective"], q["w_effective"]) != (q["n"], q["r"], q["w"]):
        line += (
            f"   effective N={q['n_effective']} R={q['r_effective']} W={q['w_effective']}: "
            f"only {q['n_effective']} owner{'s' if q['n_effective'] != 1 else ''} per partition "
            "(fewer members than N), so a write is acknowledged by "
            f"{q['w_effective']} cop{'ies' if q['w_effective'] != 1 else 'y'}"
        )
    return line


@app.command()
def stats(
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
    prometheus: Annotated[
        bool, typer.Option("--prometheus", help="Print the Prometheus text exposition format.")
    ] = False,
) -> None:
    """Counters and gauges of one peer: a table, --json, or --prometheus text."""
    if json and prometheus:
        fail("--json and --prometheus are exclusive")
    from dataclasses import asdict

    doc = asdict(_with_client(peer, cluster, lambda c: c.statistics()))
    if json:
        print_json(doc)
        return
    from ._stats import prometheus_text, stats_table

    if prometheus:
        sys.stdout.write(prometheus_text(doc))
        sys.stdout.flush()
        return
    from rich.console import Console

    Console().print(stats_table(doc))


@app.command()
def leave(
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    timeout: Annotated[
        float,
        typer.Option(
            help="Seconds the hand-off may take (default: the peer's, 120 s).", show_default=False
        ),
    ] = 0.0,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Leave even if the hand-off is incomplete or has nowhere to go."
        ),
    ] = False,
) -> None:
    """Decommission a peer: it hands every partition it holds and every hint to the current
    owners, then leaves and exits. Prints progress; returns once the peer is gone. If the
    hand-off cannot finish in time the peer stays up and this says why (exit 1)."""

    async def main() -> None:
        import trio

        import gossipkv

        async with open_client([peer], cluster=cluster) as client:
            reply = await client.leave(handoff_seconds=timeout, force=force)
            typer.echo(f"{peer}: {reply.get('status', 'leaving')}")
            last = ""
            while True:
                try:
                    with trio.fail_after(5):
                        stats = await client.statistics()
                except (gossipkv.GossipKVError, trio.TooSlowError):
                    typer.echo(f"{peer}: left")
                    return
                state = stats.leave
                line = (
                    f"{peer}: {state.get('state', 'leaving')}: "
                    f"{state.get('partitions_left', 0)} of {state.get('partitions_total', 0)} "
                    f"partitions to hand off, {state.get('hints_left', 0)} hints"
                    + (f" ({state['reason']})" if state.get("reason") else "")
                )
                if line != last:
                    typer.echo(line)
                    last = line
                if state.get("state") == "failed":
                    fail(f"{peer} stays up: the hand-off did not finish: {state.get('reason')}")
                await trio.sleep(0.5)

    run(main)


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="The member to remove (it must be dead).")],
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
) -> None:
    """Remove a member you declare dead: its partitions go to the remaining members at once.

    Refused while the leader can reach the member. Works even when the survivors are a
    minority: your word stands in for the majority the leader otherwise needs."""
    reply = _with_client(peer, cluster, lambda c: c.remove(name))
    typer.echo(
        f"removed {reply.get('removed')} (generation {reply.get('generation')}) by leader "
        f"{reply.get('leader')}; its partitions move to the remaining members"
    )
    if reply.get("minority"):
        typer.echo(
            "the remaining members are a minority of the last full view: your word stood in "
            "for the majority"
        )


def _with_client(peer: str, cluster: str, fn: Callable[[gossipkv.Client], Awaitable[T]]) -> T:
    """Run ``fn(client)`` against one peer and return its result (errors: one line, exit 1)."""

    async def main() -> T:

        async with open_client([peer], cluster=cluster) as client:
            return await fn(client)

    return run(main)


# --- data commands ---------------------------------------------------------------------------


def _context_arg(text: str | None) -> bytes | None:
    """Contexts are printed and accepted as hex (opaque to the user)."""
    if text is None or text == "":
        return None
    try:
        return bytes.fromhex(text)
    except ValueError:
        fail("--context must be the hex string printed by get or put")


def _print_values(
    key: str, found: bool | None, values: list[Any], context: bytes, json: bool, more: int = 0
) -> None:
    if json:
        doc: dict[str, Any] = {"key": key}
        if found is not None:
            doc["found"] = found
        doc["values"] = values
        doc["context"] = context.hex()
        doc["more"] = more
        print_json(doc)
        return
    if found is False:
        typer.echo(f"{key}: not found")
    elif found is None and not values:
        typer.echo(f"{key}: deleted (no live values)")
    elif len(values) > 1:
        typer.echo(f"{key}: {len(values)} siblings")
    for value in values:
        typer.echo(f"  {value!r}" if len(values) > 1 else f"{key} = {value!r}")
    if more:
        typer.echo(
            f"  ... and {more} more siblings: write their resolution with this context, "
            "then read again"
        )
    typer.echo(f"context: {context.hex() or '-'}")


@app.command()
def put(
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[str, typer.Argument(help="The value (stored as a string).")],
    context: Annotated[
        str | None, typer.Option(help="Context from an earlier get/put: replaces what it saw.")
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Read KEY first and write with that context: VALUE replaces every value read "
            "(set semantics in one command; a concurrent write elsewhere still becomes a sibling).",
        ),
    ] = False,
    w: Annotated[
        int,
        typer.Option(
            "--w",
            help="Replicas that must store it (default: the peer's W, 2).",
            show_default=False,
        ),
    ] = 0,
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """Store VALUE under KEY; prints the siblings now stored and their context.

    Without --context or --replace a put overwrites nothing: writing a key twice leaves two
    siblings. --replace reads the key's context first, so the new value replaces what it read."""
    if replace and context is not None:
        fail("--replace reads the context itself: give --replace or --context, not both")
    ctx = _context_arg(context)

    async def call(client: gossipkv.Client) -> gossipkv.PutResult:
        write_ctx = ctx
        if replace:
            write_ctx = (await client.get(key)).context or None
        return await client.put(key, value, context=write_ctx, w=w)

    res = _with_client(peer, cluster, call)
    _print_values(res.key, None, res.values, res.context, json, res.more)
    if not json and len(res.values) > 1 and not replace and ctx is None:
        typer.echo(
            f"hint: gossipkv put --replace {key} VALUE writes over the values it reads",
            err=True,
        )


@app.command()
def get(
    key: Annotated[str, typer.Argument(help="The key.")],
    r: Annotated[
        int,
        typer.Option(
            "--r", help="Replicas to hear from (default: the peer's R, 2).", show_default=False
        ),
    ] = 0,
    local: Annotated[
        bool, typer.Option("--local", help="Read only this peer's own replica (no quorum).")
    ] = False,
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """Print the values (siblings) of KEY and the context to write back with."""
    res = _with_client(peer, cluster, lambda c: c.get(key, r=r, local=local))
    _print_values(res.key, res.found, res.values, res.context, json, res.more)


@app.command()
def delete(
    key: Annotated[str, typer.Argument(help="The key.")],
    context: Annotated[str | None, typer.Option(help="Context from an earlier get.")] = None,
    w: Annotated[
        int,
        typer.Option(
            "--w",
            help="Replicas that must store it (default: the peer's W, 2).",
            show_default=False,
        ),
    ] = 0,
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """Delete KEY (a tombstone). Without --context, reads the key first (at R=2) to get it; a
    key with no live value is reported not found and nothing is written (exit 1)."""
    ctx = _context_arg(context)

    async def call(client: gossipkv.Client) -> gossipkv.PutResult | None:
        if ctx is not None:
            return await client.delete(key, context=ctx, w=w)
        got = await client.get(key)
        if not got.found:
            return None  # nothing to delete: write no tombstone
        return await client.delete(key, context=got.context, w=w)

    res = _with_client(peer, cluster, call)
    if res is None:
        fail(f"{key}: not found (nothing deleted)")
    _print_values(res.key, None, res.values, res.context, json, res.more)


@app.command()
def watch(
    prefix: Annotated[str, typer.Argument(help="Watch keys starting with this prefix.")] = "",
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    json: JsonOption = False,
) -> None:
    """Print one line per change of a key under PREFIX, anywhere in the cluster, until Ctrl-C."""
    import json as jsonlib

    async def follow() -> None:
        async with (
            open_client([peer], cluster=cluster) as client,
            client.watch(prefix) as changes,
        ):
            # On stderr, so --json output stays one JSON document per line.
            print(f"watching {prefix!r} (Ctrl-C stops)", file=sys.stderr, flush=True)
            async for change in changes:
                if json:
                    line = jsonlib.dumps(
                        {
                            "key": change.key,
                            "values": change.values,
                            "context": change.context.hex(),
                        }
                    )
                elif not change.values:
                    line = f"{change.key}: deleted  context {change.context.hex()}"
                else:
                    shown = ", ".join(repr(v) for v in change.values)
                    line = f"{change.key} = {shown}  context {change.context.hex()}"
                print(line, flush=True)

    async def main() -> None:
        await until_interrupted(follow)

    run(main)


# --- local clusters --------------------------------------------------------------------------


@cluster_app.command("up")
def cluster_up(
    n: Annotated[int, typer.Option("-n", min=1, max=1000, help="Number of peers.")] = 5,
    base_port: Annotated[int, typer.Option(help="Port of the first peer; the rest follow.")] = 7400,
    data_root: Annotated[
        Path | None, typer.Option(help="One data dir per peer under this folder (default: memory).")
    ] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    cluster: ClusterOption = "gossipkv",
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    tls: Annotated[
        bool, typer.Option("--tls", help="Mutual TLS, with a throwaway CA made for this cluster.")
    ] = False,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="Start a peer that dies again (same name, port and data dir), after a pause "
            "that doubles per restart.",
        ),
    ] = False,
) -> None:
    """Start a local cluster, one process per peer, until Ctrl-C (which stops them all).

    A peer that dies is reported on its own line (with the last line of its log)."""
    import gossipkv

    from ._launcher import LocalCluster, check_ports, run_until_signal

    try:
        check_ports(host, base_port, n)
        local = LocalCluster(
            n,
            host=host,
            base_port=base_port,
            data_root=data_root,
            cluster=cluster,
            tls=tls,
            restart=restart,
        )
    except gossipkv.GossipKVError as exc:
        fail(str(exc))

    async def on_ready(doc: dict[str, Any] | None) -> None:
        _print_ready(local, doc)

    run(lambda: run_until_signal(local, on_ready, duration=duration))


def _print_ready(local: Any, doc: dict[str, Any] | None) -> None:
    from rich.console import Console

    from ._render import members_table

    console = Console()
    if doc is None:
        console.print(f"[red]not every peer came up within 30 s; logs in {local.log_dir}[/]")
        return
    console.print(members_table(doc))
    tls = "" if local.tls_dir is None else f" --tls-dir {local.tls_dir} --tls-name operator"
    console.print(
        f"{local.n} peers up on {local.addresses()[0]}..  logs: {local.log_dir}\n"
        f"try: gossipkv members --peer {local.addresses()[0]}{tls}    Ctrl-C stops every peer",
        highlight=False,
    )


@app.command()
def dashboard(
    peer: PeerOption = DEFAULT_PEER,
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
    refresh: Annotated[float, typer.Option(help="Seconds between frames.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Print one frame and exit.")] = False,
) -> None:
    """Live view of a cluster: members, traffic, data health, gossip and membership events."""
    if refresh <= 0:
        fail("--refresh must be > 0")

    async def main() -> None:
        import trio

        from ._dashboard_poll import run_dashboard

        try:
            await until_interrupted(
                lambda: run_dashboard(peer, cluster, refresh=refresh, once=once)
            )
        except* trio.TooSlowError:
            fail(f"{peer}: no answer within the timeout")

    run(main)


@app.command()
def demo(
    n: Annotated[int, typer.Option("-n", min=1, max=50, help="Number of peers.")] = 5,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: until Ctrl-C).")
    ] = None,
    refresh: Annotated[float, typer.Option(help="Seconds between dashboard frames.")] = 1.0,
    tls: Annotated[
        bool, typer.Option("--tls", help="Mutual TLS, with a throwaway CA made for the demo.")
    ] = False,
) -> None:
    """A local in-memory cluster of 5 peers, light sample traffic and the live dashboard.

    The dashboard shows at once, with a progress line while the peers start."""
    import gossipkv

    from ._launcher import LocalCluster, free_base_port, run_until_signal

    if refresh <= 0:
        fail("--refresh must be > 0")
    try:
        base = free_base_port("127.0.0.1", n, 7400)
        local = LocalCluster(
            n, host="127.0.0.1", base_port=base, data_root=None, cluster="demo", tls=tls
        )
    except gossipkv.GossipKVError as exc:
        fail(str(exc))
    first = local.addresses()[0]
    line: dict[str, str | None] = {"notice": f"starting {n} peers on {first}..  (0 of {n} up)"}
    showing = [False]

    def say(message: str) -> None:
        # While the dashboard is drawn, a print would scroll it: the line goes into its header.
        if showing[0]:
            line["notice"] = message
        else:
            print(message, flush=True)

    local.say = say

    def progress(up: int) -> None:
        line["notice"] = f"starting {n} peers on {first}..  ({min(up, n)} of {n} up)"

    async def dashboard() -> None:
        from ._dashboard_poll import run_dashboard

        showing[0] = True
        try:
            await run_dashboard(
                first, local.cluster, refresh=refresh, notice=lambda: line["notice"]
            )
        finally:
            showing[0] = False

    async def on_ready(doc: dict[str, Any] | None) -> None:
        import random

        from ._demo_traffic import write_sample_traffic

        if doc is None:
            line["notice"] = f"not every peer came up within 30 s; logs in {local.log_dir}"
            return
        tls = "" if local.tls_dir is None else f"  TLS: --tls-dir {local.tls_dir} --tls-name app"
        line["notice"] = f"{local.n} peers up on {first}..{tls}  Ctrl-C stops every peer"
        await write_sample_traffic(local.addresses(), local.cluster, random.Random(7))

    run(
        lambda: run_until_signal(
            local, on_ready, duration=duration, on_start=dashboard, progress=progress
        )
    )


def main() -> None:
    app(prog_name="gossipkv")
