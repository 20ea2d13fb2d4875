"""gossipkv: a gossip-based, leaderless, eventually consistent key-value store on Trio."""

from ._errors import (
    ConfigError as ConfigError,
    ConnectionClosed as ConnectionClosed,
    DataDirError as DataDirError,
    DecodeError as DecodeError,
    GossipKVError as GossipKVError,
    HandshakeError as HandshakeError,
    NodeClosedError as NodeClosedError,
    RemoteError as RemoteError,
    TransportError as TransportError,
)
from ._version import __version__ as __version__
