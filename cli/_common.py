"""What every command shares: the peer option, error reporting, JSON output.

Imports nothing heavy at module level (no trio, rich or gossipkv): every command module imports
this one, and ``gossipkv --help`` should stay quick.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import typer

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
