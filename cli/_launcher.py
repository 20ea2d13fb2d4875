"""Local clusters of real peer processes (``cluster up`` and ``demo``).

Each peer is its own ``python -m gossipkv_cli peer`` process. The launcher forwards Ctrl-C/SIGTERM
as a graceful leave to every peer, waits for them, kills what is left after a deadline, and on
each peer watches its parent and leaves if the launcher itself dies, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

import gossipkv

from ._common import open_client, use_tls


@dataclass
class PeerProcess:
    name: str
    address: str
    process: trio.Process
    log_path: Path
    args: list[str]
    expected_exit: bool = False
    restarts: int = 0


#: Seconds before a dead peer is started again (``--restart``), doubling per restart up to
#: :data:`MAX_RESTART_DELAY`, so a peer that dies at once does not spin.
RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0


def check_address(host: str, base_port: int, n: int) -> None:
    """Refuse, with one line, ports out of range and a host this machine cannot bind.

    Raises:
      ConfigError: what is wrong and which option to change.
    """
    if not 1 <= base_port <= 65535 or base_port + n - 1 > 65535:
        raise gossipkv.ConfigError(
            f"--base-port {base_port} with -n {n} needs ports {base_port}..{base_port + n - 1}: "
            "ports are 1..65535"
        )
    try:
        socket.getaddrinfo(host, base_port, socket.AF_INET, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise gossipkv.ConfigError(f"--host {host}: cannot resolve it ({reason})") from None


def free_base_port(host: str, n: int, start: int) -> int:
    """The first base port from ``start`` such that ``n`` consecutive ports are free on ``host``."""
    base = start
    while base + n < 65536:
        if all(_bind_error(host, base + i) is None for i in range(n)):
            return base
        base += n
    raise gossipkv.ConfigError(f"no {n} consecutive free ports on {host} from {start}")


def _bind_error(host: str, port: int) -> OSError | None:
    """Why ``host:port`` cannot be bound now, or ``None`` when it can."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


def check_ports(host: str, base_port: int, n: int) -> None:
    """Refuse ports in use, or a host that is not an address of this machine, in one line."""
    check_address(host, base_port, n)
    errors = {base_port + i: _bind_error(host, base_port + i) for i in range(n)}
    busy = [p for p, e in errors.items() if e is not None and e.errno == errno.EADDRINUSE]
    other = next(
        (e for e in errors.values() if e is not None and e.errno != errno.EADDRINUSE), None
    )
    if other is not None:
        raise gossipkv.ConfigError(
            f"cannot listen on {host}: {other.strerror or other} (pick another --host)"
        )
    if busy:
        raise gossipkv.ConfigError(
            f"port{'s' if len(busy) > 1 else ''} {', '.join(map(str, busy))} on {host} already in use "
            f"(pick another --base-port)"
        )


class LocalCluster:
    """Starts and stops ``n`` peer processes on consecutive ports."""

    def __init__(
        self,
        n: int,
        *,
        host: str,
        base_port: int,
        data_root: Path | None,
        cluster: str,
        extra_args: list[str] | None = None,
        say: Callable[[str], None] = print,
        tls: bool = False,
        restart: bool = False,
    ) -> None:
        if n < 1:
            raise gossipkv.ConfigError("-n must be at least 1")
        self.n = n
        self.host = host
        self.base_port = base_port
        self.data_root = data_root
        self.cluster = cluster
        self.extra_args = extra_args or []
        self.say = say
        self.restart = restart
        self.peers: list[PeerProcess] = []
        self._log_dir: Path | None = data_root
        #: The temporary folder of logs (and certificates) made when there is no ``data_root``:
        #: removed at :meth:`stop` unless a peer failed, so its log can be read.
        self.temp_dir: Path | None = None
        self._tls = tls

    @property
    def log_dir(self) -> Path:
        """Where the peers' logs go: ``data_root``, or a temporary folder made on first use."""
        if self._log_dir is None:
            self._log_dir = self.temp_dir = Path(tempfile.mkdtemp(prefix="gossipkv-cluster-"))
        return self._log_dir

    @property
    def tls_dir(self) -> Path | None:
        """With ``tls``: a throwaway CA with one certificate per peer, ``operator`` (this
        launcher's own clients use it) and ``app`` (a client)."""
        return self.log_dir / "tls" if self._tls else None

    def _make_certificates(self) -> None:
        assert self.tls_dir is not None
        gossipkv.create_ca(self.tls_dir, force=True)
        for i in range(self.n):
            gossipkv.issue_certificate(self.tls_dir, f"n{i + 1}", "peer", force=True)
        gossipkv.issue_certificate(self.tls_dir, "operator", "operator", force=True)
        gossipkv.issue_certificate(self.tls_dir, "app", "client", force=True)

    def addresses(self) -> list[str]:
        return [f"{self.host}:{self.base_port + i}" for i in range(self.n)]

    async def start(self, nursery: trio.Nursery) -> None:
        check_ports(self.host, self.base_port, self.n)
        if self.data_root is not None:
            self.data_root.mkdir(parents=True, exist_ok=True)
        if self.tls_dir is not None:
            await trio.to_thread.run_sync(self._make_certificates)
            use_tls(str(self.tls_dir), "operator")
        addrs = self.addresses()
        for i, addr in enumerate(addrs):
            name = f"n{i + 1}"
            args = [
                sys.executable,
                "-m",
                "gossipkv_cli",
                "peer",
                "--name",
                name,
                "--listen",
                addr,
                "--cluster",
                self.cluster,
                # Leave gracefully if this launcher dies without stopping us (no orphans).
                "--parent-pid",
                str(os.getpid()),
                *self.extra_args,
            ]
            if i > 0:
                args += ["--seed", addrs[0]]
            if self.data_root is not None:
                args += ["--data-dir", str(self.data_root / name)]
            if self.tls_dir is not None:
                args += ["--tls-dir", str(self.tls_dir)]
            log_path = self.log_dir / f"{name}.log"
            peer = PeerProcess(name, addr, await _spawn(args, log_path), log_path, args)
            self.peers.append(peer)
            nursery.start_soon(self._watch, peer)

    async def _watch(self, peer: PeerProcess) -> None:
        """Say when a peer dies on its own; with ``restart``, start it again (same name, port
        and data dir, so it rejoins as itself)."""
        while True:
            code = await peer.process.wait()
            if peer.expected_exit:
                return
            tail = _last_line(peer.log_path)
            how = f"exited with code {code}" if code >= 0 else f"was killed by signal {-code}"
            self.say(
                f"peer {peer.name} {how}"
                + (f": {tail}" if tail else "")
                + ("" if self.restart else "  (cluster up --restart starts dead peers again)")
            )
            if not self.restart:
                return
            await trio.sleep(min(MAX_RESTART_DELAY, RESTART_DELAY * 2**peer.restarts))
            if peer.expected_exit:
                return
            if "--seed" not in peer.args and self.data_root is None:
                # The first peer seeds nobody: memory-only, it would found a new cluster.
                others = [p.address for p in self.peers if p is not peer]
                if others:
                    peer.args = [*peer.args, "--seed", others[0]]
            peer.restarts += 1
            peer.process = await _spawn(peer.args, peer.log_path)
            self.say(
                f"peer {peer.name} restarted (restart {peer.restarts}), pid {peer.process.pid}"
            )

    async def wait_all_up(
        self, within: float, progress: Callable[[int], None] | None = None
    ) -> dict[str, Any] | None:
        """Wait until the first peer lists every peer as up; returns its members document.

        ``progress(up)`` is called with the number of peers up each time it is checked."""
        with trio.move_on_after(within):
            while True:
                doc = await members_of(self.addresses(), self.cluster)
                ups = [] if doc is None else [m for m in doc["members"] if m["status"] == "up"]
                if progress is not None:
                    progress(len(ups))
                if doc is not None and len(ups) >= self.n:
                    return doc
                await trio.sleep(0.2)
        return None

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every peer (graceful leave), then SIGKILL whatever is still running."""
        for peer in self.peers:
            peer.expected_exit = True
            if peer.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    peer.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(grace):
            for peer in self.peers:
                await peer.process.wait()
        for peer in self.peers:
            if peer.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    peer.process.kill()
                await peer.process.wait()
        if self.temp_dir is not None:
            if all(p.process.returncode == 0 for p in self.peers):
                await trio.to_thread.run_sync(shutil.rmtree, self.temp_dir, True)
            else:
                self.say(f"peer logs kept in {self.temp_dir}")


async def _spawn(args: list[str], log_path: Path) -> trio.Process:
    """Start one peer process, its output appended to ``log_path``."""
    log_fd = await trio.to_thread.run_sync(_open_log, log_path)
    devnull = subprocess_devnull()
    try:
        return await trio.lowlevel.open_process(args, stdin=devnull, stdout=log_fd, stderr=log_fd)
    finally:
        os.close(log_fd)
        os.close(devnull)


def _open_log(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def subprocess_devnull() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


async def members_of(addresses: list[str], cluster: str) -> dict[str, Any] | None:
    """The members document of the first answering address, or ``None``."""
    try:
        async with open_client(addresses, cluster=cluster, connect_timeout=0.5) as client:
            from ._render import members_doc

            return members_doc(await client.members())
    except gossipkv.GossipKVError:
        return None


async def run_until_signal(
    cluster: LocalCluster,
    on_ready: Callable[[dict[str, Any] | None], Awaitable[None]],
    *,
    duration: float | None = None,
    on_start: Callable[[], Awaitable[None]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Start ``cluster``, call ``on_ready`` once all are up, run until Ctrl-C/SIGTERM or ``duration``.

    ``on_start`` runs as soon as the processes are started (the demo's dashboard), alongside;
    ``progress`` hears how many peers are up while they start."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:
                await cluster.start(nursery)
                if on_start is not None:
                    nursery.start_soon(on_start)

                async def ready_then_wait() -> None:
                    doc = await cluster.wait_all_up(within=30.0, progress=progress)
                    # on_ready may run until cancelled (the demo's dashboard): time runs alongside.
                    async with trio.open_nursery() as inner:
                        inner.start_soon(on_ready, doc)
                        if duration is not None:
                            await trio.sleep(duration)
                            nursery.cancel_scope.cancel()

                nursery.start_soon(ready_then_wait)
                async for _ in signals:
                    cluster.say("stopping peers (graceful leave)...")
                    break
                nursery.cancel_scope.cancel()
        finally:
            with trio.move_on_after(30.0, shield=True):
                await cluster.stop()
            cluster.say("all peers stopped")
