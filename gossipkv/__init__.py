"""gossipkv: a gossip-based, leaderless, eventually consistent key-value store on Trio.

Start a peer with :func:`open_node` (or ``await nursery.start(Node(...).run)``), talk to a running
cluster with :func:`open_client`, and test your own app on a simulated network with
:mod:`gossipkv.testing`.
"""

from ._client import Client as Client
from ._client import open_client as open_client
from ._errors import (
    ClusterNotReady as ClusterNotReady,
)
from ._errors import (
    ConfigError as ConfigError,
)
from ._errors import (
    ConnectionClosed as ConnectionClosed,
)
from ._errors import (
    DataDirError as DataDirError,
)
from ._errors import (
    DecodeError as DecodeError,
)
from ._errors import (
    GossipKVError as GossipKVError,
)
from ._errors import (
    HandshakeError as HandshakeError,
)
from ._errors import (
    InvalidArgument as InvalidArgument,
)
from ._errors import (
    InvalidContext as InvalidContext,
)
from ._errors import (
    InvalidKey as InvalidKey,
)
from ._errors import (
    KeyTooLarge as KeyTooLarge,
)
from ._errors import (
    NodeClosedError as NodeClosedError,
)
from ._errors import (
    QuorumNotReached as QuorumNotReached,
)
from ._errors import (
    RecordTooLarge as RecordTooLarge,
)
from ._errors import (
    RemoteError as RemoteError,
)
from ._errors import (
    StorageError as StorageError,
)
from ._errors import (
    TooManySiblings as TooManySiblings,
)
from ._errors import (
    TransportError as TransportError,
)
from ._errors import (
    Unavailable as Unavailable,
)
from ._errors import (
    ValueNotEncodable as ValueNotEncodable,
)
from ._errors import (
    ValueTooDeep as ValueTooDeep,
)
from ._errors import (
    ValueTooLarge as ValueTooLarge,
)
from ._histogram import quantile as histogram_quantile
from ._kv import Change as Change
from ._kv import GetResult as GetResult
from ._kv import PutResult as PutResult
from ._limits import NetworkLimits as NetworkLimits
from ._messages import PROTOCOL_VERSION as PROTOCOL_VERSION
from ._node import (
    Node as Node,
)
from ._node import (
    NodeStatistics as NodeStatistics,
)
from ._node import (
    open_node as open_node,
)
from ._node_config import NodeConfig as NodeConfig
from ._replica_store import KVConfig as KVConfig
from ._statistics import Statistic as Statistic
from ._version import __version__ as __version__
from .membership._gossiper import (
    GossipConfig as GossipConfig,
)
from .membership._gossiper import (
    MembershipEvent as MembershipEvent,
)
from .membership._gossiper import (
    MemberView as MemberView,
)
from .storage import StorageLimits as StorageLimits
from .transport import TLSConfig as TLSConfig
from .transport import create_ca as create_ca
from .transport import issue_certificate as issue_certificate

__all__ = [
    "PROTOCOL_VERSION",
    "Change",
    "Client",
    "ClusterNotReady",
    "GetResult",
    "InvalidContext",
    "InvalidKey",
    "KVConfig",
    "KeyTooLarge",
    "InvalidArgument",
    "PutResult",
    "QuorumNotReached",
    "StorageError",
    "TooManySiblings",
    "Unavailable",
    "ValueNotEncodable",
    "ValueTooLarge",
    "ValueTooDeep",
    "RecordTooLarge",
    "Statistic",
    "StorageLimits",
    "TLSConfig",
    "create_ca",
    "issue_certificate",
    "ConfigError",
    "ConnectionClosed",
    "DataDirError",
    "DecodeError",
    "GossipConfig",
    "GossipKVError",
    "HandshakeError",
    "MemberView",
    "MembershipEvent",
    "NetworkLimits",
    "Node",
    "NodeClosedError",
    "NodeConfig",
    "NodeStatistics",
    "RemoteError",
    "TransportError",
    "__version__",
    "histogram_quantile",
    "open_client",
    "open_node",
]
