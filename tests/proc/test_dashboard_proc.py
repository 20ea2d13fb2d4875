"""``gossipkv dashboard`` and ``gossipkv demo`` against real peer processes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._peers import ENV, Peers, children_of, cli, eventually, free_ports, is_running, members

pytestmark = pytest.mark.proc

NAMES = ["n1", "n2", "n3"]


async def three_peers(peers: Peers) -> None:
    ports = free_ports(3)
    peers.start("n1", ports[0])
    for name, port in zip(NAMES[1:], ports[1:], strict=True):
        peers.start(name, port, seeds=["n1"])

    async def all_up() -> Any:
        doc = await members(peers.addr["n1"])
        ok = (
            doc is not None
            and doc["leader"] == "n1"
            and sorted(m["name"] for m in doc["members"] if m["status"] == "up") == NAMES
        )
        return ok

    await eventually(all_up, within=30, what="3 peers up with leader n1", peers=peers)


async def test_once_against_three_real_peers(peers: Peers) -> None:
    await three_peers(peers)
    out = cli("dashboard", "--once", "--peer", peers.addr["n2"])
    assert out.returncode == 0, out.stderr
    for name in NAMES:
        assert name in out.stdout
    assert "n1 *" in out.stdout and "leader n1" in out.stdout, out.stdout
    for title in ("members seen by n2", "traffic", "data health", "gossip", "events"):
        assert title in out.stdout
    assert out.stderr == ""
    # Rates are differences between two polls: --once waits for the second, so none is "-".
    assert re.search(r"rounds \d+\.\d/s", out.stdout), out.stdout
    assert re.search(r"bytes \d+ (B|KiB|MiB)/s", out.stdout), out.stdout


def test_once_against_a_closed_port_is_one_line_and_exit_1() -> None:
    port = free_ports(1)[0]
    out = cli("dashboard", "--once", "--peer", f"127.0.0.1:{port}")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error:"), out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "expect"),
    [(["--peer", "nonsense"], "bad address"), (["--refresh", "0"], "--refresh")],
)
def test_bad_options_are_one_line(args: list[str], expect: str) -> None:
    out = cli("dashboard", "--once", *args)
    assert out.returncode == 1
    assert out.stderr.startswith("error:") and expect in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


async def test_once_with_the_wrong_cluster_is_one_line(peers: Peers) -> None:
    port = free_ports(1)[0]
    peers.start("solo", port)

    async def up() -> Any:
        return await members(peers.addr["solo"])

    await eventually(up, within=20, what="solo up", peers=peers)
    out = cli("dashboard", "--once", "--peer", peers.addr["solo"], "--cluster", "other")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "cluster" in out.stderr, out.stderr


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_demo_in_80x24_then_200x50_and_ctrl_c(tmp_path: Path) -> None:
    """The demo in a real 80x24 terminal: a first frame with a progress line while the peers
    start, then every member and the newest events on one screen; resized to 200x50 it uses
    the width; a killed peer shows as an event; Ctrl-C exits 0 and leaves no process behind."""
    sock = f"gossipkv-demo-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    command = f"echo PID=$$; exec {shlex.quote(sys.executable)} -m gossipkv_cli demo --refresh 0.5"
    temp = tmp_path / "tmp"
    temp.mkdir()
    subprocess.run(
        [*tmux, "-f", "/dev/null", "new-session", "-d", "-x", "80", "-y", "24", command],
        check=True,
        env={**ENV, "TERM": "xterm-256color", "TMPDIR": str(temp)},
    )
    subprocess.run([*tmux, "set-option", "-g", "remain-on-exit", "on"], check=False)

    def screen() -> str:
        out = subprocess.run(
            [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=False
        )
        return out.stdout

    async def shows(*needles: str) -> Any:
        text = screen()
        return text if all(n in text for n in needles) else None

    try:
        # The first frame comes before any peer answers (the peers take seconds to start).
        first = await eventually(
            lambda: shows("gossipkv dashboard", "starting 5 peers"),
            within=20,
            what="a first frame with the start-up progress line",
        )
        assert "of 5 up" in first
        assert "PID=" in first, first
        pid = int(first.split("PID=")[1].split()[0])
        # "5 peers up" is the launcher's line and "converged" covers the members n1 knows of:
        # wait for n1 to list all five (a CI run caught the frame before n2 was among them).
        rows = [f"│ n{i} " for i in range(1, 6)]
        text = await eventually(
            lambda: shows("5 peers up", "converged yes", "up:5", *rows),
            within=40,
            what="every peer up, with its events",
        )
        lines = text.rstrip("\n").splitlines()
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        for i in range(1, 6):
            assert re.search(rf"│ n{i}\b", text), (i, text)
        assert "more" not in text, text
        children = children_of(pid)
        assert len(children) == 5
        n5 = next(c for c in children if "n5" in _cmdline(c))
        os.kill(n5, signal.SIGKILL)

        async def n5_down() -> Any:
            text = screen()
            events = text.split("─ events ─")[-1]
            return text if "n5 up -> down" in events else None

        text = await eventually(n5_down, within=30, what="the n5 down event at 80x24")
        assert all(re.search(rf"│ n{i}\b", text) for i in range(1, 6)), text
        # The launcher's word on it rides in the header's border, not printed over the frame.
        assert "╰─ peer n5 was killed by signal 9" in await eventually(
            lambda: shows("peer n5 was killed"), within=10, what="the launcher's line"
        )

        subprocess.run([*tmux, "resize-window", "-x", "200", "-y", "50"], check=True)

        async def wide() -> Any:
            text = screen()
            rows = [ln for ln in text.splitlines() if re.search(r"│ n\d", ln)]
            return text if len(rows) == 5 and all(len(r.rstrip()) > 150 for r in rows) else None

        wide_text = await eventually(wide, within=15, what="the members table across 200 columns")
        assert "127.0.0.1:" in wide_text and "generation" in wide_text
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        stopped = await eventually(
            lambda: shows("all peers stopped"), within=40, what="Ctrl-C stops"
        )
        assert f"peer logs kept in {temp}" in stopped.replace("\n", "")  # n5 died: its log stays
        assert "Traceback" not in screen()

        async def demo_gone() -> bool:
            return not is_running(pid)

        await eventually(demo_gone, within=15, what="the demo exits")
        assert [c for c in children if is_running(c)] == []
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_live_dashboard_in_a_real_terminal(peers: Peers, tmp_path: Path) -> None:
    await three_peers(peers)
    sock = f"gossipkv-dash-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    command = (
        f"{shlex.quote(sys.executable)} -m gossipkv_cli dashboard --peer {peers.addr['n1']} "
        f"--refresh 0.5; echo EXIT=$?; sleep 60"
    )
    subprocess.run(
        [*tmux, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40", command],
        check=True,
        env={**ENV, "TERM": "xterm-256color"},
    )
    try:

        def screen() -> str:
            out = subprocess.run(
                [*tmux, "capture-pane", "-p"], capture_output=True, text=True, check=False
            )
            return out.stdout

        async def shows(*needles: str) -> Any:
            text = screen()
            return text if all(n in text for n in needles) else None

        await eventually(
            lambda: shows("n1 *", "n2", "n3", "leader n1", "UN up"),
            within=20,
            what="dashboard showing 3 members and the leader",
        )
        peers.signal("n3", signal.SIGKILL)

        async def n3_down() -> Any:
            return any(
                "n3" in line and "DN down" in line for line in screen().splitlines()
            ) and await shows("n3 up -> down")

        await eventually(n3_down, within=30, what="n3 shown down with an event", peers=peers)
        subprocess.run([*tmux, "send-keys", "C-c"], check=True)
        await eventually(lambda: shows("EXIT=0"), within=15, what="Ctrl-C exits with 0")
        assert "Traceback" not in screen()
    finally:
        subprocess.run([*tmux, "kill-server"], check=False, capture_output=True)
