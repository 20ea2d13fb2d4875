"""Where data lives and how it moves: ``ring``, ``owners``, ``transfers`` and ``repair``.

Each command asks a peer through the public client and prints a table, or the peer's document
with ``--json``; errors are one line and a non-zero exit (``_common.run``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    import gossipkv

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
)


def _client(peer: str, cluster: str, request_timeout: float = 5.0) -> Any:
    return open_client([peer], cluster=cluster, request_timeout=request_timeout)


def register(app: typer.Typer) -> None:
    """Add the commands to ``app``."""

    @app.command()
    def ring(
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """The partition table: each partition's owners, and the moves still pending (owners
        pulling it)."""

        async def fetch() -> dict[str, Any]:
            async with _client(peer, cluster) as client:
                doc: dict[str, Any] = await client.ring()
                return doc

        doc = run(fetch)
        if json:
            print_json(doc)
            return
        from rich.console import Console
        from rich.table import Table

        if doc.get("epoch") is None:
            typer.echo("no partition table yet (the cluster has not formed)")
            return
        term, seq = doc["epoch"]
        pulling: dict[str, list[str]] = doc.get("pulling") or {}
        table = Table(
            title=f"partition table epoch {term}.{seq}: {doc['partitions']} partitions x "
            f"N={doc['replicas']}",
            title_justify="left",
        )
        table.add_column("partition", justify="right")
        table.add_column("owners")
        table.add_column("pulling (moves pending)")
        for p, row in enumerate(doc["owners"]):
            table.add_row(str(p), " ".join(row), " ".join(pulling.get(str(p), [])) or "-")
        table.caption = f"under-replicated partitions: {doc.get('under_replicated', 0)}"
        table.caption_justify = "left"
        Console(width=200).print(table)

    @app.command()
    def owners(
        key: Annotated[str, typer.Argument(help="The key.")],
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Where a key lives: its partition, its owners, which of them hold it now, and how
        many siblings each has."""

        async def fetch() -> dict[str, Any]:
            async with _client(peer, cluster) as client:
                doc: dict[str, Any] = await client.owners(key)
                return doc

        doc = run(fetch)
        if json:
            print_json(doc)
            return
        typer.echo(f"{doc['key']}: partition {doc['partition']}")
        for row in doc["owners"]:
            state = (
                "unreachable"
                if not row["reachable"]
                else row.get("error")
                or (f"holds it, {row['siblings']} siblings" if row["holds"] else "does not hold it")
            )
            note = " (still pulling this partition)" if row.get("pulling") else ""
            typer.echo(f"  {row['name']}: {state}{note}")

    @app.command()
    def transfers(
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Every partition transfer in flight in the cluster: from, to, keys sent and left, rate
        (each member is asked)."""

        async def fetch() -> list[dict[str, Any]]:
            import gossipkv

            async with _client(peer, cluster) as client:
                rows: list[gossipkv.MemberView] = await client.members()
            out: list[dict[str, Any]] = []
            for member in rows:
                if not member.reachable or not member.address:
                    continue
                try:
                    async with _client(member.address, cluster) as client:
                        stats: gossipkv.NodeStatistics = await client.statistics()
                except gossipkv.GossipKVError:
                    continue
                out.extend(stats.transfers)
            return out

        rows = run(fetch)
        if json:
            print_json(rows)
            return
        if not rows:
            typer.echo("no transfers in flight")
            return
        for t in sorted(rows, key=lambda t: (t["to"], t["partition"], t["from"])):
            left = max(0, int(t["keys_total"]) - int(t["keys_done"]))
            typer.echo(
                f"partition {t['partition']:>4}  {t['from']} -> {t['to']}  "
                f"{t['keys_done']} keys sent, {left} left, {t['rate']:.0f} keys/s"
                + (f"  (last page failed: {t['error']})" if t.get("error") else "")
            )

    @app.command()
    def repair(
        partition: Annotated[
            int | None,
            typer.Option(help="Only this partition (default: every partition the peer owns)."),
        ] = None,
        peer: PeerOption = DEFAULT_PEER,
        cluster: ClusterOption = "gossipkv",
        tls_dir: TlsDirOption = None,
        tls_name: TlsNameOption = None,
        json: JsonOption = False,
    ) -> None:
        """Run anti-entropy of a peer's partitions now, against every other reachable owner,
        until they agree; prints what it repaired."""

        async def main() -> list[dict[str, Any]]:
            async with _client(peer, cluster, request_timeout=600.0) as client:
                ring_doc = await client.ring()
                if ring_doc.get("epoch") is None:
                    fail("no partition table yet (the cluster has not formed)")
                stats: gossipkv.NodeStatistics = await client.statistics()
                me = stats.name
                owned = [p for p, row in enumerate(ring_doc["owners"]) if me in row]
                if partition is not None:
                    total = int(ring_doc["partitions"])
                    if not 0 <= partition < total:
                        fail(f"--partition must be in 0..{total - 1}")
                    if partition not in owned:
                        fail(f"{me} does not own partition {partition}")
                    owned = [partition]
                results = []
                for p in owned:
                    result: dict[str, Any] = await client.repair(p)
                    results.append(result)
                    if not json:
                        typer.echo(
                            f"partition {p:>4}: {result['keys_repaired']} keys repaired with "
                            f"{', '.join(result['compared']) or 'nobody'}"
                            + (
                                f" ({', '.join(result['unreachable'])} unreachable)"
                                if result["unreachable"]
                                else ""
                            )
                        )
                return results

        results = run(main)
        if json:
            print_json(results)
            return
        typer.echo(
            f"repaired {sum(r['keys_repaired'] for r in results)} keys in {len(results)} partitions"
        )
