"""``gossipkv peer --metrics-listen HOST:PORT``: ``/metrics`` for Prometheus, served by Trio.

A tiny HTTP/1.0-style server in the peer's own nursery (no thread): each scrape takes a fresh
``node.statistics()`` snapshot and renders it with ``prometheus_client``
(:class:`~._stats.SnapshotCollector`). Requests are bounded: the head must arrive within
:data:`REQUEST_TIMEOUT` seconds and fit :data:`MAX_REQUEST_BYTES`, at most
:data:`MAX_SCRAPERS` are served at once (more wait for the listener's backlog), and anything
but ``GET /metrics`` gets a short 404 or 405.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    import gossipkv

REQUEST_TIMEOUT = 10.0
MAX_REQUEST_BYTES = 8192
MAX_SCRAPERS = 8


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (an empty host binds every interface).

    Raises:
      ValueError: not HOST:PORT with a port in 1..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--metrics-listen must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


async def open_metrics_listeners(text: str) -> list[trio.SocketListener]:
    """Bind the metrics address now, so a port in use is one error line before the peer starts.

    Raises:
      ConfigError: the address does not parse or cannot be bound.
    """
    import gossipkv

    try:
        host, port = parse_listen(text)
    except ValueError as exc:
        raise gossipkv.ConfigError(str(exc)) from None
    try:
        return await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise gossipkv.ConfigError(
            f"cannot listen on {text} for metrics: {exc.strerror or exc}"
        ) from None


def metrics_text(node: gossipkv.Node) -> bytes:
    """The node's statistics now, in the Prometheus text format."""
    from ._stats import prometheus_text

    return prometheus_text(asdict(node.statistics())).encode("utf-8")


async def serve_metrics(
    node: gossipkv.Node,
    listeners: list[trio.SocketListener],
    *,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` on ``listeners`` until cancelled."""
    limit = trio.Semaphore(MAX_SCRAPERS)

    async def handle(stream: trio.SocketStream) -> None:
        async with limit, stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT):
                    head = await _read_head(stream)
                    await stream.send_all(_respond(node, head))
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(trio.serve_listeners, handle, [listener])
        task_status.started()


async def _read_head(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        chunk = await stream.receive_some(MAX_REQUEST_BYTES)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST_BYTES:
            break
    return data


def _respond(node: gossipkv.Node, head: bytes) -> bytes:
    line = head.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) < 2:
        return _reply(400, b"bad request\n")
    method, target = parts[0], parts[1].split("?", 1)[0]
    if target != "/metrics":
        return _reply(404, b"not found: try /metrics\n")
    if method not in ("GET", "HEAD"):
        return _reply(405, b"method not allowed\n")
    body = metrics_text(node)
    return _reply(
        200, b"" if method == "HEAD" else body, "text/plain; version=0.0.4; charset=utf-8"
    )


def _reply(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body
