"""Public testing tools: run gossipkv (or your own Trio app) on a simulated, deterministic net."""

from ._cluster import SimCluster as SimCluster
from ._cluster import open_sim_cluster as open_sim_cluster
from ._echo import EchoClient as EchoClient
from ._echo import open_echo_client as open_echo_client
from ._echo import open_echo_server_process as open_echo_server_process
from ._echo import serve_echo as serve_echo
from ._sim import SimNetwork as SimNetwork
from ._sim import SimNetworkStatistics as SimNetworkStatistics
