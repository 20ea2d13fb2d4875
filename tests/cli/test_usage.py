"""The command line's own manners, in process: ``-h`` everywhere, usage errors on one line,
one stated default per option (issue 16)."""

from __future__ import annotations

import fcntl
import re
from pathlib import Path

import pytest
from gossipkv_cli._app import app
from typer.main import get_command
from typer.testing import CliRunner

runner = CliRunner()


def command_paths() -> list[list[str]]:
    """Every command of the app, as the argument list that names it."""
    out: list[list[str]] = []

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out.append(path)

    walk(get_command(app), [])
    return out


def test_every_command_accepts_dash_h_and_states_each_default_once() -> None:
    paths = command_paths()
    assert ["put"] in paths and ["bench", "kv"] in paths and ["cluster", "up"] in paths
    for path in [[], *paths]:
        res = runner.invoke(app, [*path, "-h"], env={"COLUMNS": "200"})
        assert res.exit_code == 0, (path, res.output)
        assert "Usage:" in res.output, path
        for line in res.output.splitlines():
            # "(default: X)" in the help text and typer's "[default: Y]" would be two defaults.
            assert not (re.search(r"\(default", line) and "[default:" in line), (path, line)


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["put"], "Missing argument"),
        (["put", "k", "v", "--w", "x"], "Invalid value for '--w'"),
        (["put", "k", "v", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["cluster", "up", "-n", "0"], "-n"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], expect: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and expect in lines[0], lines
    assert "-h'" in lines[0]  # says where the help is
    assert res.stdout == ""


def test_no_arguments_prints_the_help_and_exits_0() -> None:
    res = runner.invoke(app, [])
    assert res.exit_code == 0 and "Usage:" in res.stdout


def test_put_replace_and_context_are_exclusive() -> None:
    res = runner.invoke(app, ["put", "k", "v", "--replace", "--context", "00"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "error: --replace reads the context itself: give --replace or --context, not both"
    ]


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["--base-port", "70000"], "error: --base-port 70000 with -n 5 needs ports 70000..70004"),
        (["--base-port", "65534", "-n", "3"], "error: --base-port 65534 with -n 3 needs ports"),
        (["--host", "nosuchhost.invalid"], "error: --host nosuchhost.invalid: cannot resolve it"),
        (["--host", "192.0.2.1", "-n", "1"], "error: cannot listen on 192.0.2.1"),
    ],
)
def test_cluster_up_refuses_bad_addresses_in_one_line(args: list[str], expect: str) -> None:
    res = runner.invoke(app, ["cluster", "up", *args])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), lines
    assert res.stdout == ""


def test_bench_storage_refuses_a_peer_data_dir_and_a_full_folder(tmp_path: Path) -> None:
    peer_dir = tmp_path / "peer"
    (peer_dir / "data").mkdir(parents=True)
    (peer_dir / "membership.lock").touch()
    lock = peer_dir / "data" / "LOCK"
    lock.write_text("4242\n")
    args = ["bench", "storage", "--keys", "10", "--json", "--data-dir"]
    with open(lock, "rb") as held:  # a live peer holds its engine's lock
        fcntl.flock(held, fcntl.LOCK_EX)
        res = runner.invoke(app, [*args, str(peer_dir)])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        f"error: --data-dir {peer_dir} is a peer's data dir (membership.lock, data, in use by "
        "pid 4242); bench storage needs an empty or new folder"
    ]
    res = runner.invoke(app, [*args, str(peer_dir)])  # the peer stopped: still its data dir
    assert res.exit_code == 1 and "is a peer's data dir (membership.lock, data)" in res.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("x")
    res = runner.invoke(app, [*args, str(full)])
    assert res.exit_code == 1
    assert "is not empty; bench storage needs an empty or new folder" in res.stderr
    assert sorted(p.name for p in peer_dir.iterdir()) == ["data", "membership.lock"]
    assert [p.name for p in (peer_dir / "data").iterdir()] == ["LOCK"]  # nothing written


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ('name = "a"\nbogus = 1\n', "unknown key 'bogus' (known: cluster, data_dir,"),
        ("name = \n", "not valid TOML: Invalid value (at line 1, column 8)"),
        ('[gossip]\nfanout = "x"\n', "[gossip] fanout must be an integer, got 'x'"),
        ("[gossip]\nfanot = 1\n", "unknown key 'fanot' in [gossip] (known: cluster,"),
        ("[kv]\nr = 1.5\n", "[kv] r must be an integer, got 1.5"),
        ('seed = "127.0.0.1:1"\n', "seed must be a list, got '127.0.0.1:1'"),
        ("[nope]\nx = 1\n", "unknown key 'nope'"),
        ('tombstone_grace = "forever"\n', 'tombstone_grace must be seconds or "inf"'),
    ],
)
def test_a_bad_config_file_is_one_line_and_starts_nothing(
    tmp_path: Path, text: str, expect: str
) -> None:
    path = tmp_path / "peer.toml"
    path.write_text(text)
    res = runner.invoke(app, ["peer", "--config", str(path), "--listen", "127.0.0.1:1"])
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: config {path}: "), lines
    assert expect in lines[0], lines
    res = runner.invoke(app, ["peer", "--config", str(tmp_path / "missing.toml")])
    assert res.exit_code == 1 and "No such file or directory" in res.stderr
