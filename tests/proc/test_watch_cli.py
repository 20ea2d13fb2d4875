"""``gossipkv watch`` as a real process against 3 real peers: JSON lines, then Ctrl-C exits 0."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from ._peers import ENV, Peers, free_ports
from .test_kv_cli import doc_of, kv, start_all, wait_ready

pytestmark = pytest.mark.proc


async def read_until(stream: Any, buf: bytearray, done: Any) -> None:
    """Append what ``stream`` yields to ``buf`` until ``done(buf)`` holds (or EOF)."""
    while not done(buf):
        chunk = await stream.receive_some(65536)
        if not chunk:
            return
        buf.extend(chunk)


async def test_watch_cli_json_lines_then_sigint(peers: Peers, tmp_path: Path) -> None:
    ports = free_ports(3)
    start_all(peers, tmp_path, ports)
    await wait_ready(peers)

    proc = await trio.lowlevel.open_process(
        [
            sys.executable,
            "-m",
            "gossipkv_cli",
            "watch",
            "user:",
            "--json",
            "--peer",
            peers.addr["n1"],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=ENV,
    )
    assert proc.stdout is not None and proc.stderr is not None
    out = bytearray()
    err = bytearray()
    try:
        with trio.fail_after(30):
            await read_until(proc.stderr, err, lambda b: b"watching" in b)
        assert b"watching" in err, err.decode(errors="replace")

        put1 = doc_of(kv("put", "user:1", "alice", "--peer", peers.addr["n2"]))
        doc_of(kv("put", "other:1", "ignored", "--peer", peers.addr["n3"]))
        put2 = doc_of(kv("put", "user:2", "bob", "--peer", peers.addr["n3"]))

        def both(buf: bytearray) -> bool:
            return b'"user:1"' in buf and b'"user:2"' in buf and buf.endswith(b"\n")

        with trio.fail_after(30):
            await read_until(proc.stdout, out, both)
        lines: list[dict[str, Any]] = [json.loads(x) for x in out.decode().splitlines()]
        assert all(set(doc) == {"key", "values", "context"} for doc in lines), lines
        by_key = {(d["key"], d["context"]): d for d in lines}
        assert by_key[("user:1", put1["context"])]["values"] == ["alice"], lines
        assert by_key[("user:2", put2["context"])]["values"] == ["bob"], lines
        assert not any(d["key"] == "other:1" for d in lines), lines
        # Every replica stored each put, yet each change is printed once.
        assert len(lines) == len(by_key), lines

        proc.send_signal(signal.SIGINT)
        with trio.fail_after(15):
            rc = await proc.wait()
        assert rc == 0, err.decode(errors="replace")
    finally:
        if proc.returncode is None:
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
