"""The client of a gossipkv cluster: connects to any listed peer and fails over to the next.

Operator requests (``members``, ``leave``, ``set_metadata``) go to one peer, the one the caller
names first when it is reachable. Only requests that are safe to repeat are retried elsewhere.
:class:`Client` (``_facade``) is assembled from rooms of one concept each; see ``_facade``.
"""

from ._facade import Client as Client
from ._facade import open_client as open_client
