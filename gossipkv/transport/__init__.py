"""Transports: bytes between addresses (TCP for real, SimNetwork in gossipkv.testing)."""

from ._base import Connection as Connection
from ._base import Handler as Handler
from ._base import ReceiveBudget as ReceiveBudget
from ._base import Transport as Transport
from ._certs import create_ca as create_ca
from ._certs import issue_certificate as issue_certificate
from ._tcp import TcpTransport as TcpTransport
from ._tls import TLSConfig as TLSConfig
from ._tls import TLSHandshakeFailed as TLSHandshakeFailed
from ._tls import TLSIdentity as TLSIdentity
