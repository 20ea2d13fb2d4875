"""The CLI starts light: ``--help``, ``--version`` and shell completion import no trio or gossipkv.

Checked structurally (which modules a run imports, from ``python -X importtime``), never by timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gossipkv

# What a command imports when it runs, and what --help, --version and completion must not.
HEAVY = {"trio", "cbor2", "gossipkv", "prometheus_client"}

# The console script pip installed next to this interpreter (what a user runs).
SCRIPT = Path(sys.executable).with_name("gossipkv")


@pytest.fixture(autouse=True, scope="module")
def _installed() -> None:
    assert SCRIPT.exists(), f"the gossipkv command is not installed next to {sys.executable}"


def _imported(command: list[str], env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """Run ``python -X importtime COMMAND``: the top-level packages it imported, and its stdout."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", *command],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "gossipkv_cli._app" in modules  # the parse worked
    return {m.split(".")[0] for m in modules}, proc.stdout


@pytest.mark.parametrize(
    "args", [["--help"], ["bench", "kv", "--help"], ["put", "--help"], ["cluster", "up", "--help"]]
)
def test_help_imports_neither_trio_nor_gossipkv(args: list[str]) -> None:
    packages, out = _imported([str(SCRIPT), *args])
    assert "Usage: gossipkv" in out
    assert not packages & HEAVY, packages & HEAVY


def test_python_m_help_imports_neither_trio_nor_gossipkv() -> None:
    packages, out = _imported(["-m", "gossipkv_cli", "--help"])
    assert "Usage:" in out
    assert not packages & HEAVY, packages & HEAVY


def test_version_imports_nothing_heavy_and_matches_the_package() -> None:
    packages, out = _imported([str(SCRIPT), "--version"])
    assert out == f"gossipkv {gossipkv.__version__}\n"
    # Not even rich: typer only needs it to format help and errors.
    assert not packages & (HEAVY | {"rich"}), packages & (HEAVY | {"rich"})


def test_show_completion_prints_a_bash_script() -> None:
    out = subprocess.run(
        [SCRIPT, "--show-completion", "bash"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "_GOSSIPKV_COMPLETE=complete_bash" in out.stdout
    assert "complete -o default -F _gossipkv_completion gossipkv" in out.stdout


@pytest.mark.parametrize(
    ("words", "expected"),
    [("gossipkv mem", {"members"}), ("gossipkv bench ", {"gossip", "kv", "storage"})],
)
def test_completion_completes_commands(words: str, expected: set[str]) -> None:
    env = {
        **os.environ,
        "_GOSSIPKV_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    out = subprocess.run([SCRIPT], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert set(out.stdout.split()) == expected


def test_completion_imports_neither_trio_nor_gossipkv() -> None:
    env = {"_GOSSIPKV_COMPLETE": "complete_bash", "COMP_WORDS": "gossipkv pu", "COMP_CWORD": "1"}
    packages, out = _imported([str(SCRIPT)], env=env)
    assert out.split() == ["put"]
    assert not packages & HEAVY, packages & HEAVY
