"""Transports: bytes between addresses (TCP for real, SimNetwork in gossipkv.testing)."""

from ._base import Connection as Connection, Handler as Handler, Transport as Transport
from ._tcp import TcpTransport as TcpTransport
