"""Real peer processes for the CLI tier: start, signal, poll (with deadlines, never bare sleeps)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from gossipkv_cli._render import members_doc

import gossipkv

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cli(
    *args: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossipkv_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


class Peers:
    """Peer processes started by one test; all are killed at teardown."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.addr: dict[str, str] = {}

    def start(self, name: str, port: int, seeds: list[str] = (), **opts: str) -> None:  # type: ignore[assignment]
        addr = f"127.0.0.1:{port}"
        args = [sys.executable, "-m", "gossipkv_cli", "peer", "--name", name, "--listen", addr]
        for seed in seeds:
            args += ["--seed", self.addr.get(seed, seed)]
        for key, value in opts.items():
            args += [f"--{key.replace('_', '-')}", value]
        log = open(self.tmp / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            args, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=ENV
        )
        log.close()
        self.addr[name] = addr

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=10)


async def members(addr: str) -> dict[str, Any] | None:
    try:
        async with gossipkv.open_client([addr], connect_timeout=0.5, request_timeout=2.0) as c:
            return members_doc(await c.members())
    except gossipkv.GossipKVError:
        return None


async def eventually(
    check: Callable[[], Any], *, within: float, what: str, peers: Peers | None = None
) -> Any:
    """Re-run the async ``check`` until it returns a truthy value or ``within`` seconds pass."""
    last: Any = None
    with trio.move_on_after(within):
        while True:
            last = await check()
            if last:
                return last
            await trio.sleep(0.1)
    logs = ""
    if peers is not None:
        logs = "\n".join(f"--- {n}\n{peers.log(n)[-1500:]}" for n in peers.procs)
    raise AssertionError(f"timed out after {within}s waiting for {what}; last={last!r}\n{logs}")


def view(doc: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    return {m["name"]: (m["status"], m["age_rank"]) for m in doc["members"]}


def loads(out: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(out)
    return value


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid``."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
