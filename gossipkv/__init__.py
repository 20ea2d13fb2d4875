"""gossipkv: a gossip-based, leaderless, eventually consistent key-value store on Trio."""

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
    NodeClosedError as NodeClosedError,
)
from ._errors import (
    RemoteError as RemoteError,
)
from ._errors import (
    TransportError as TransportError,
)
from ._version import __version__ as __version__
