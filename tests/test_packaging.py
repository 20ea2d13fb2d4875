"""The wheel ships exactly the two packages, the type marker and the ``gossipkv`` command."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Build from a copy, so a stale build/ in the checkout can neither leak old files into the wheel
# nor be written to by the test.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src") / "gossipkv"
    shutil.copytree(ROOT, src, ignore=NOT_SOURCE)
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the test extra installs setuptools, and nothing is downloaded.
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", ".", "-q", "-w", str(out)),
            *("--no-deps", "--no-build-isolation", "--no-index"),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [built] = out.glob("gossipkv-*.whl")
    return zipfile.ZipFile(built)


def test_only_gossipkv_and_gossipkv_cli_are_top_level(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/")[0] for name in wheel.namelist()}
    [dist_info] = [t for t in tops if t.endswith(".dist-info")]
    assert tops - {dist_info} == {"gossipkv", "gossipkv_cli"}
    assert not any(name.endswith(".pyc") for name in wheel.namelist())


def test_wheel_ships_the_type_marker_and_the_cli_modules(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "gossipkv/py.typed" in names
    assert {
        "gossipkv/testing/__init__.py",
        "gossipkv/storage/__init__.py",
        "gossipkv/_client/__init__.py",
        "gossipkv/_client/_connection.py",
    } <= names
    # `python -m gossipkv_cli` and the console script's target.
    assert {"gossipkv_cli/__main__.py", "gossipkv_cli/_app.py"} <= names


def test_wheel_declares_the_gossipkv_command(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(entry_points).decode())
    assert dict(parser["console_scripts"]) == {"gossipkv": "gossipkv_cli._app:main"}
