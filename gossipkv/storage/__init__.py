"""Storage: durable versioned records, one DVVSet clock per key (DESIGN §9).

``open_storage(data_dir)`` gives the log engine (Write-Ahead Log + Segmented Log) on a data dir, or
the memory engine when ``data_dir`` is ``None``. The clock types are re-exported here so callers
that may only use the public API (the CLI) can build and read clocks.
"""

from gossipkv._dvv import ActorMint as ActorMint
from gossipkv._dvv import DVVSet as DVVSet
from gossipkv._dvv import Entry as Entry
from gossipkv._dvv import Sibling as Sibling
from gossipkv._dvv import partition_of as partition_of

from ._base import DEFAULT_LIMITS as DEFAULT_LIMITS
from ._base import NOT_CACHED as NOT_CACHED
from ._base import Clock as Clock
from ._base import FsyncPolicy as FsyncPolicy
from ._base import NotCached as NotCached
from ._base import StorageEngine as StorageEngine
from ._base import StorageLimits as StorageLimits
from ._base import StorageStatistics as StorageStatistics
from ._log import LogEngine as LogEngine
from ._log import open_log_engine as open_log_engine
from ._memory import MemoryEngine as MemoryEngine
from ._open import open_storage as open_storage
