"""What every command shares: the peer option, error reporting, JSON output.

Imports nothing heavy at module level (no trio, rich or gossipkv): every command module imports
this one, and ``gossipkv --help`` should stay quick.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    import gossipkv

T = TypeVar("T")

DEFAULT_PEER = "127.0.0.1:7400"

PeerOption = Annotated[
    str,
    typer.Option(
        "--peer",
        envvar="GOSSIPKV_PEER",
        help="Peer to talk to, HOST:PORT.",
        show_default=True,
    ),
]
ClusterOption = Annotated[
    str,
    typer.Option("--cluster", envvar="GOSSIPKV_CLUSTER", help="Cluster name.", show_default=True),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (stable shape).")]

# The TLS material of this command's client connections (issue 13). The options record it here
# as they are parsed, so every command (and the helpers they share) opens its clients through
# :func:`open_client` below without passing it along.
_tls: dict[str, str | None] = {"dir": None, "name": None}


def _remember(key: str) -> Callable[[str | None], str | None]:
    def callback(value: str | None) -> str | None:
        _tls[key] = value or None
        return value

    return callback


TlsDirOption = Annotated[
    str | None,
    typer.Option(
        "--tls-dir",
        envvar="GOSSIPKV_TLS_DIR",
        callback=_remember("dir"),
        help="Connect with mutual TLS: a directory made by gossipkv certs (ca.pem, NAME.pem/key).",
    ),
]
TlsNameOption = Annotated[
    str | None,
    typer.Option(
        "--tls-name",
        envvar="GOSSIPKV_TLS_NAME",
        callback=_remember("name"),
        help="Whose certificate in --tls-dir to use (default: the only one there).",
    ),
]


def use_tls(directory: str | None, name: str | None) -> None:
    """Make this process's clients use the certificate ``name`` in ``directory``."""
    _tls["dir"], _tls["name"] = directory, name


def client_tls() -> gossipkv.TLSConfig | None:
    """The TLS configuration of this command's clients (``None``: plaintext).

    Raises:
      ConfigError: the directory or the certificate is missing.
    """
    import gossipkv

    if not _tls["dir"]:
        return None
    return gossipkv.TLSConfig.from_dir(_tls["dir"], _tls["name"])


def open_client(peers: list[str], **kwargs: Any) -> AbstractAsyncContextManager[gossipkv.Client]:
    """``gossipkv.open_client`` with this command's TLS settings."""
    import gossipkv

    return gossipkv.open_client(peers, tls=client_tls(), **kwargs)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one readable error line to stderr and exit non-zero."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """``trio.run`` a command body, turning gossipkv errors into one line and exit 1."""
    import trio

    import gossipkv

    try:
        return trio.run(fn)
    except gossipkv.GossipKVError as exc:
        fail(str(exc))
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(leaf, typer.Exit):
                raise leaf from None  # fail() inside the body: its line is printed already
        if leaves and all(isinstance(e, gossipkv.GossipKVError) for e in leaves):
            fail(str(leaves[0]))
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def peer_env() -> str:
    return os.environ.get("GOSSIPKV_PEER", DEFAULT_PEER)
