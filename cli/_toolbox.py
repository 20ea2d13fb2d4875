"""The operator's toolbox (issue 16): ``tags``, ``config show``, ``log-level``, ``ping``,
``keys`` and ``monitor``.

Each command asks a peer through the public client and prints lines or a table, or JSON with
``--json``; errors are one line and a non-zero exit (``_common.run``). ``keys`` and ``monitor``
stream: they print as pages and lines arrive and hold no more than one page.
"""

from __future__ import annotations

import json as jsonlib
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ._common import (
    DEFAULT_PEER,
    ClusterOption,
    JsonOption,
    PeerOption,
    TlsDirOption,
    TlsNameOption,
    fail,
    open_client,
    print_json,
    run,
    sub_app,
    until_interrupted,
)

if TYPE_CHECKING:
    import gossipkv

tags_app = sub_app("A peer's tags: metadata every member sees (serf tags).")
config_app = sub_app("Configuration files and the configuration of running peers.")

LEVELS = ("debug", "info", "warning", "error", "critical")


def _client(peer: str, cluster: str, request_timeout: float = 5.0) -> Any:
    return open_client([peer], cluster=cluster, request_timeout=request_timeout)


def _own_tags(doc: dict[str, Any]) -> dict[str, Any]:
    me: dict[str, Any] = next(
        (m for m in doc.get("members", []) if m.get("name") == doc.get("self")), {}
    )
    return dict(me.get("metadata") or {})


def register(app: typer.Typer) -> None:
    """Add the commands to ``app``."""
    app.add_typer(tags_app, name="tags")
    app.add_typer(config_app, name="config")

    @tags_app.command("set")
    def tags_set(
        pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE (repeatable).")],
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Set tags on a peer; gossip spreads them to every member (``members`` shows them)."""
        items: list[tuple[str, str | None]] = []
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                fail(f"tags must be KEY=VALUE, got {pair!r}")
            items.append((key, value))
        _change_tags(peer, cluster, items, json)

    @tags_app.command("delete")
    def tags_delete(
        keys: Annotated[list[str], typer.Argument(help="Tag keys to remove (repeatable).")],
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Remove tags from a peer."""
        _change_tags(peer, cluster, [(k, None) for k in keys], json)

    @config_app.command("show")
    def config_show(
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """The effective configuration of a running peer (operator role under TLS): its
        options and every GossipConfig, KVConfig and limit, after flags, file and defaults."""

        async def fetch() -> dict[str, Any]:
            async with _client(peer, cluster) as client:
                doc: dict[str, Any] = await client.config()
                return doc

        doc = run(fetch)
        if json:
            print_json(doc)
            return
        for section, values in doc.items():
            typer.echo(f"[{section}]")
            for key, value in (values or {}).items():
                typer.echo(f"# {key} (not set)" if value is None else f"{key} = {_toml(value)}")
            typer.echo("")

    @app.command("log-level")
    def log_level(
        level: Annotated[str, typer.Argument(help="debug, info, warning, error or critical.")],
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Change a running peer's log level now (operator role under TLS); not persisted."""
        if level.lower() not in LEVELS:
            fail(f"unknown log level {level!r}: one of {', '.join(LEVELS)}", code=2)

        async def call() -> dict[str, Any]:
            async with _client(peer, cluster) as client:
                doc: dict[str, Any] = await client.set_log_level(level.lower())
                return doc

        doc = run(call)
        if json:
            print_json({"peer": peer, **doc})
        else:
            typer.echo(f"{peer}: log level {doc['previous']} -> {doc['level']}")

    @app.command()
    def ping(
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Reachability and round-trip time from a peer to every member it knows, as that peer
        sees them (exit 3 when a member does not answer)."""

        async def call() -> dict[str, Any]:
            async with _client(peer, cluster, request_timeout=15.0) as client:
                doc: dict[str, Any] = await client.ping()
                return doc

        doc = run(call)
        rows = doc.get("members", [])
        if json:
            print_json(doc)
        elif not rows:
            typer.echo(f"{doc.get('self')}: no other member to ping")
        else:
            width = max(len(str(r["name"])) for r in rows)
            typer.echo(f"from {doc.get('self')}:")
            for r in rows:
                rtt = "-" if r.get("rtt_ms") is None else f"{r['rtt_ms']:.2f} ms"
                note = f"  ({r['error']})" if r.get("error") else ""
                typer.echo(
                    f"  {r['name']:<{width}}  {r['address']:<21}  {r['status']:<8}  {rtt:>10}{note}"
                )
        if any(r.get("rtt_ms") is None for r in rows):
            raise typer.Exit(3)

    @app.command()
    def keys(
        prefix: Annotated[str, typer.Argument(help="Only keys starting with it.")] = "",
        page: Annotated[int, typer.Option(min=1, max=1000, help="Keys asked per request.")] = 500,
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Every live key (under PREFIX), partition by partition, a page at a time from one
        owner of each: printed as it comes, never held whole. One replica per partition is
        asked, so a key written a moment ago may not be listed yet."""

        async def scan() -> int:
            return await _scan_keys(peer, cluster, prefix, page, json)

        missed = run(scan)
        if missed:
            fail(f"{missed} partition(s) could not be listed: no owner answered")

    @app.command()
    def backup(
        directory: Annotated[Path, typer.Argument(help="A new folder for the dump.")],
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Dump every live key with its whole clock (siblings and all) from one owner of each
        partition into DIRECTORY (keys.jsonl, then manifest.json)."""
        from ._backup import backup as run_backup

        manifest = run(lambda: run_backup(peer, cluster, directory))
        if json:
            print_json(manifest)
        else:
            typer.echo(f"backed up {manifest['keys']} keys of {cluster} into {directory}")

    @app.command()
    def snapshot(
        tag: Annotated[
            str, typer.Argument(help="The snapshot's name (default: the current UTC time).")
        ] = "",
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Hard-link a consistent copy of one peer's log engine into DATA_DIR/snapshots/TAG
        (operator role under TLS; like nodetool snapshot). To restore it, stop the peer and
        put the snapshot's data and hints folders in place of the peer's."""

        async def call() -> dict[str, Any]:
            async with _client(peer, cluster) as client:
                doc: dict[str, Any] = await client.snapshot(tag)
                return doc

        doc = run(call)
        if json:
            print_json({"peer": peer, **doc})
        else:
            typer.echo(
                f"{peer}: snapshot {doc['tag']} of {doc['keys']} keys in {doc['path']} "
                f"({doc['files']} files, {doc['bytes']} bytes, hard-linked)"
            )

    @app.command()
    def restore(
        directory: Annotated[Path, typer.Argument(help="A folder written by gossipkv backup.")],
        force: Annotated[
            bool, typer.Option("--force", help="Merge into a cluster that already holds keys.")
        ] = False,
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Merge a backup into the cluster (operator role under TLS): each clock is synced into
        its key's owners, so siblings stay siblings. Refused when the cluster holds keys,
        unless --force."""
        from ._backup import restore as run_restore

        doc = run(lambda: run_restore(peer, cluster, directory, force))
        if json:
            print_json(doc)
        else:
            typer.echo(f"restored {doc['restored']} keys from {directory}")

    @app.command()
    def monitor(
        level: Annotated[
            str, typer.Option(help="Lowest log level shown: debug, info, warning, error.")
        ] = "info",
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Follow a peer's log and membership events until Ctrl-C (operator role under TLS).
        Records below the peer's own level are not made at all: lower it with log-level."""
        if level.lower() not in LEVELS:
            fail(f"unknown log level {level!r}: one of {', '.join(LEVELS)}", code=2)

        async def follow() -> None:
            async with (
                _client(peer, cluster) as client,
                client.monitor(level.lower()) as lines,
            ):
                print(f"monitoring {peer} (Ctrl-C stops)", file=sys.stderr, flush=True)
                async for kind, lvl, line in lines:
                    if json:
                        out = jsonlib.dumps({"kind": kind, "level": lvl, "line": line})
                    else:
                        out = line if kind == "log" else f"event: {line}"
                    print(out, flush=True)

        async def main() -> None:
            await until_interrupted(follow)

        run(main)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return jsonlib.dumps(value)


def _change_tags(peer: str, cluster: str, items: list[tuple[str, str | None]], json: bool) -> None:
    async def call() -> dict[str, Any]:
        async with _client(peer, cluster) as client:
            for key, value in items:
                await client.set_metadata(key, value)
            from ._render import members_doc

            return members_doc(await client.members())

    doc = run(call)
    tags = _own_tags(doc)
    if json:
        print_json({"name": doc.get("self"), "tags": tags})
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted(tags.items())) or "(none)"
    typer.echo(f"{doc.get('self')} tags: {shown}")


async def _scan_keys(peer: str, cluster: str, prefix: str, page: int, json: bool) -> int:
    """Print every live key, one owner per partition; returns the partitions no owner listed."""
    import gossipkv

    from ._backup import partition_owners

    out = sys.stdout
    first = True
    if json:
        out.write("[")
    missed = 0
    async with AsyncExitStack() as stack:
        entry = await stack.enter_async_context(_client(peer, cluster))
        table, address = await partition_owners(entry)
        clients: dict[str, gossipkv.Client] = {}

        async def client_for(addr: str) -> gossipkv.Client:
            if addr == entry.connected_to:
                return entry  # type: ignore[no-any-return]
            if addr not in clients:
                clients[addr] = await stack.enter_async_context(_client(addr, cluster))
            return clients[addr]

        for partition, owners in enumerate(table):
            after = ""
            done = False
            for owner in owners:
                addr = address.get(owner)
                if addr is None:
                    continue
                try:
                    client = await client_for(addr)
                    while True:
                        body = await client.keys_page(
                            partition, after=after, limit=page, prefix=prefix
                        )
                        for key in body["keys"]:  # type: ignore[attr-defined]
                            if json:
                                out.write(("" if first else ",") + "\n" + jsonlib.dumps(key))
                            else:
                                out.write(key + "\n")
                            first = False
                            after = key
                        out.flush()
                        if body["next"] is None:
                            break
                        after = str(body["next"])
                    done = True
                    break
                except gossipkv.GossipKVError as exc:
                    # Resume at the next owner from the last key printed (keys are sorted).
                    print(f"partition {partition}: {owner}: {exc}", file=sys.stderr)
            if not done:
                missed += 1
    if json:
        out.write("\n]\n")
        out.flush()
    return missed
