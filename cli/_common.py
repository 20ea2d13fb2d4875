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
from typer.core import TyperGroup

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


#: ``-h`` everywhere, as ``--help`` (subcommands inherit it from the root context).
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}


class OneLineErrors(TyperGroup):
    """The root group: a usage error is one line on stderr (not typer's boxed panel) and exit 2.

    ``typer`` formats errors itself only in standalone mode, so this runs the command line in
    non-standalone mode and reports what comes out; ``CliRunner`` and the console script both
    call :meth:`main`, so tests see what users see.
    """

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except Exception as exc:
            # typer vendors its own click from 0.2x on: match click's exception classes by name.
            kinds = {cls.__name__ for cls in type(exc).__mro__}
            ctx = getattr(exc, "ctx", None)
            if "NoArgsIsHelpError" in kinds and ctx is not None:
                typer.echo(ctx.get_help())
                sys.exit(0)
            if "UsageError" in kinds:
                where = ctx.command_path if ctx is not None else (prog_name or "gossipkv")
                message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
                typer.echo(f"error: {message} (see '{where} -h')", err=True)
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            if "ClickException" in kinds:
                typer.echo(f"error: {exc.format_message()}", err=True)  # type: ignore[attr-defined]
                sys.exit(exc.exit_code)  # type: ignore[attr-defined]
            if "Abort" in kinds:
                typer.echo("error: interrupted", err=True)
                sys.exit(130)
            raise
        sys.exit(rv if isinstance(rv, int) else 0)


def sub_app(help: str) -> typer.Typer:
    """A command group with the root's settings (``-h``, no arguments shows the help)."""
    return typer.Typer(no_args_is_help=True, help=help, context_settings=CONTEXT_SETTINGS)


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
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        for leaf in leaves:
            if isinstance(leaf, typer.Exit):
                raise leaf from None  # fail() inside the body: its line is printed already
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            fail("interrupted", code=130)
        if leaves and all(isinstance(e, gossipkv.GossipKVError) for e in leaves):
            fail(str(leaves[0]))
        raise


async def until_interrupted(body: Callable[[], Awaitable[object]]) -> bool:
    """Run ``body`` until it returns or SIGINT/SIGTERM arrives (which cancels it).

    Returns:
      Whether a signal stopped it.
    """
    import signal

    import trio

    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await body()
            nursery.cancel_scope.cancel()
    return interrupted


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def stdout_console() -> Any:
    """A rich console for stdout: the terminal's width on a terminal; when piped, wide enough
    that nothing is cut or wrapped (rich would otherwise assume 80 columns)."""
    from rich.console import Console

    if sys.stdout.isatty():
        return Console()
    return Console(width=4096, soft_wrap=True)


def table_width(console: Any) -> int | None:
    """The width a table must fit in: the terminal's, or ``None`` (no limit) when piped."""
    return int(console.width) if sys.stdout.isatty() else None


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def peer_env() -> str:
    return os.environ.get("GOSSIPKV_PEER", DEFAULT_PEER)
