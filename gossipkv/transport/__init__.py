"""Transports: bytes between addresses (TCP for real, SimNetwork in gossipkv.testing)."""

from ._base import Connection as Connection
from ._base import Handler as Handler
from ._base import ReceiveBudget as ReceiveBudget
from ._base import Transport as Transport
from ._tcp import TcpTransport as TcpTransport
