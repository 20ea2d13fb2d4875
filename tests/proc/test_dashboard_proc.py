"""``gossipkv dashboard`` and ``gossipkv demo`` against real peer processes."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

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


async def test_demo_ctrl_c_exits_0_and_leaves_no_process() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gossipkv_cli", "demo", "--duration", "8", "--refresh", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    try:

        async def five_children() -> Any:
            kids = children_of(proc.pid)
            return kids if len(kids) == 5 else None

        children = await eventually(five_children, within=20, what="5 demo peers started")
        await trio.sleep(3.0)  # peers up, traffic and a few dashboard frames
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=40)
        assert proc.returncode == 0, out.decode(errors="replace")
        assert b"all peers stopped" in out
        assert b"Traceback" not in out
        assert children_of(proc.pid) == []
        assert [pid for pid in children if is_running(pid)] == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


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
