"""The typer application: one sync function per command, each calling ``trio.run``."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=True, help="gossipkv: a gossip key-value store")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (numbers, never pass/fail).")
app.add_typer(bench_app, name="bench")

from ._bench_storage import storage as _bench_storage  # noqa: E402

bench_app.command("storage")(_bench_storage)


def main() -> None:
    app()
