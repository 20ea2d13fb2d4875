"""One harness per transport, so tests/transport/test_conformance.py runs over each of them."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest
import trio
import trio.testing

from gossipkv._codec import frame_header
from gossipkv.testing import SimNetwork
from gossipkv.transport import (
    Connection,
    Handler,
    ReceiveBudget,
    TcpTransport,
    TLSConfig,
    Transport,
    _tcp,
    create_ca,
    issue_certificate,
)

MAX_FRAME = 64 * 1024  # small, so limit tests stay fast


class Stalled(Protocol):
    async def aclose(self) -> None: ...


class Harness(Protocol):
    kind: str
    max_frame: int

    async def serve(
        self,
        handler: Handler,
        *,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = math.inf,
        receive_budget: ReceiveBudget | None = None,
    ) -> str:
        """Start a server in the test's nursery; return its address."""

    async def connect(self, address: str) -> Connection: ...

    async def send_stalled(self, address: str, length: int) -> Stalled:
        """From a connection of its own, start a frame of ``length`` bytes whose body does not
        finish arriving for an hour; close the result to end that connection."""

    def transport_at(self, address: str) -> Transport:
        """A transport that may try to listen on ``address``."""

    def dead_address(self) -> str:
        """An address nothing listens on."""


class TcpHarness:
    kind = "tcp"
    max_frame = MAX_FRAME

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.transport = TcpTransport(max_frame=MAX_FRAME)

    async def serve(
        self,
        handler: Handler,
        *,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = math.inf,
        receive_budget: ReceiveBudget | None = None,
    ) -> str:
        server = TcpTransport(
            max_frame=max_frame, frame_timeout=frame_timeout, receive_budget=receive_budget
        )
        address: str = await self._nursery.start(server.serve, "127.0.0.1:0", handler)
        return address

    async def connect(self, address: str) -> Connection:
        return await self.transport.connect(address)

    async def send_stalled(self, address: str, length: int) -> Stalled:
        host, _, port = address.rpartition(":")
        stream = await trio.open_tcp_stream(host, int(port))
        # The header and a first piece of the body; the rest never comes.
        await stream.send_all(frame_header(b"x" * length) + b"x" * min(1000, length - 1))
        return stream

    def transport_at(self, address: str) -> Transport:
        return TcpTransport(max_frame=MAX_FRAME)

    def dead_address(self) -> str:
        # A port that was free a moment ago; nothing we start listens there.
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"127.0.0.1:{port}"


class TlsHarness(TcpHarness):
    """TCP with mutual TLS on both ends (issue 13): the same contract inside TLS."""

    kind = "tls"

    def __init__(self, nursery: trio.Nursery, pki: Path) -> None:
        self._nursery = nursery
        self._server_tls = TLSConfig.from_dir(pki, "server")
        self._client_tls = TLSConfig.from_dir(pki, "client1")
        self.transport = TcpTransport(max_frame=MAX_FRAME, tls=self._client_tls)

    async def serve(
        self,
        handler: Handler,
        *,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = math.inf,
        receive_budget: ReceiveBudget | None = None,
    ) -> str:
        server = TcpTransport(
            max_frame=max_frame,
            frame_timeout=frame_timeout,
            receive_budget=receive_budget,
            tls=self._server_tls,
        )
        address: str = await self._nursery.start(server.serve, "127.0.0.1:0", handler)
        return address

    async def send_stalled(self, address: str, length: int) -> Stalled:
        host, _, port = address.rpartition(":")
        raw = await trio.open_tcp_stream(host, int(port))
        stream = trio.SSLStream(raw, self._client_tls.contexts()[1])
        await stream.send_all(frame_header(b"x" * length) + b"x" * min(1000, length - 1))
        return stream

    def transport_at(self, address: str) -> Transport:
        return TcpTransport(max_frame=MAX_FRAME, tls=self._server_tls)


class SimHarness:
    kind = "sim"
    max_frame = MAX_FRAME

    def __init__(self, nursery: trio.Nursery, net: SimNetwork) -> None:
        self._nursery = nursery
        self.net = net
        self._servers = 0
        self._stallers = 0
        self.client = net.transport("10.0.1.1:5000")

    async def serve(
        self,
        handler: Handler,
        *,
        max_frame: int = MAX_FRAME,
        frame_timeout: float = math.inf,
        receive_budget: ReceiveBudget | None = None,
    ) -> str:
        self._servers += 1
        address = f"10.0.0.{self._servers}:7400"
        transport = self.net.transport(address)
        transport.max_frame = max_frame
        transport.frame_timeout = frame_timeout
        transport.receive_budget = receive_budget
        bound: str = await self._nursery.start(transport.serve, address, handler)
        return bound

    async def connect(self, address: str) -> Connection:
        return await self.client.connect(address)

    async def send_stalled(self, address: str, length: int) -> Stalled:
        # A process of its own on a link that takes an hour to carry the body.
        self._stallers += 1
        source = f"10.0.3.{self._stallers}:5000"
        self.net.set_link(source, address, bandwidth=length / 3600)
        conn = await self.net.transport(source).connect(address)
        await conn.send(b"x" * length)
        return conn

    def transport_at(self, address: str) -> Transport:
        return self.net.transport(address)

    def dead_address(self) -> str:
        return "10.0.2.1:7400"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    create_ca(directory)
    issue_certificate(directory, "server", "peer")
    issue_certificate(directory, "client1", "client")
    return directory


@pytest.fixture(params=["tcp", "tcp-stream", "tls", "sim"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def clock(transport_kind: str) -> trio.testing.MockClock | None:
    """Request this in every conformance test: pytest-trio runs the sim under it (TCP: real)."""
    if transport_kind == "sim":
        return trio.testing.MockClock(autojump_threshold=0)
    return None


@pytest.fixture
async def harness(
    transport_kind: str, nursery: trio.Nursery, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Harness]:
    if transport_kind == "tcp":
        yield TcpHarness(nursery)
    elif transport_kind == "tcp-stream":
        # Plaintext TCP through trio's SocketStream: the path a trio release that no longer
        # keeps the OS socket where gossipkv finds it falls back to. It must keep the contract.
        monkeypatch.setattr(_tcp, "_raw_socket", lambda stream: None)
        harness = TcpHarness(nursery)
        harness.kind = "tcp-stream"
        yield harness
    elif transport_kind == "tls":
        yield TlsHarness(nursery, pki)
    else:
        # The test must also request ``clock``, or the simulation would run on real time.
        assert isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        net = SimNetwork(seed=0, max_frame=MAX_FRAME)
        await nursery.start(net.run)
        yield SimHarness(nursery, net)
