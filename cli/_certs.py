"""``gossipkv certs``: the cluster CA, its certificates, and reloading them on a running peer.

The name of a certificate is its subject CN (and a DNS alternative name); its role, ``peer``,
``client`` or ``operator``, is its subject OU. See the README's "Security → TLS" section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    ClusterOption,
    PeerOption,
    TlsDirOption,
    TlsNameOption,
    fail,
    open_client,
    run,
    sub_app,
)

certs_app = sub_app("The cluster CA and its TLS certificates.")

DirOption = Annotated[
    Path, typer.Option("--dir", help="The CA directory (ca.pem, ca.key, NAME.pem, NAME.key).")
]


@certs_app.command("init")
def init(
    dir: DirOption,
    days: Annotated[int, typer.Option(min=1, help="Days the CA is valid.")] = 3650,
    force: Annotated[bool, typer.Option(help="Replace an existing CA.")] = False,
) -> None:
    """Create a cluster CA: ca.key (mode 0600) and the self-signed ca.pem."""
    import gossipkv

    try:
        path = gossipkv.create_ca(dir, days=days, force=force)
    except gossipkv.GossipKVError as exc:
        fail(str(exc))
    typer.echo(f"created the cluster CA {path}")


@certs_app.command("issue")
def issue(
    dir: DirOption,
    peer: Annotated[
        str | None, typer.Option("--peer", help="Issue a peer certificate for this member name.")
    ] = None,
    client: Annotated[
        str | None, typer.Option("--client", help="Issue a client certificate with this name.")
    ] = None,
    operator: Annotated[
        str | None,
        typer.Option("--operator", help="Issue an operator certificate with this name."),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Days the certificate is valid.")] = 825,
    force: Annotated[bool, typer.Option(help="Replace an existing NAME.pem.")] = False,
) -> None:
    """Issue NAME.pem and NAME.key (0600), signed by the CA in --dir."""
    import gossipkv

    chosen = [(n, r) for n, r in ((peer, "peer"), (client, "client"), (operator, "operator")) if n]
    if len(chosen) != 1:
        fail("give exactly one of --peer NAME, --client NAME or --operator NAME")
    name, role = chosen[0]
    try:
        path = gossipkv.issue_certificate(dir, name, role, days=days, force=force)
    except gossipkv.GossipKVError as exc:
        fail(str(exc))
    typer.echo(f"issued {role} certificate {path}")


@certs_app.command("reload")
def reload(
    peer: PeerOption = "127.0.0.1:7400",
    cluster: ClusterOption = "gossipkv",
    tls_dir: TlsDirOption = None,
    tls_name: TlsNameOption = None,
) -> None:
    """Have a running peer read its certificate, key and CA bundle again (operator role).

    New connections use them; open connections keep theirs. SIGHUP does the same.
    """

    async def main() -> None:
        async with open_client([peer], cluster=cluster) as client:
            await client.reload_tls()

    run(main)
    typer.echo(f"{peer} reloaded its TLS certificates")
