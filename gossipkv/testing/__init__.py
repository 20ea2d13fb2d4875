"""Public testing tools: run gossipkv (or your own Trio app) on a simulated, deterministic net."""

from ._cluster import SimCluster as SimCluster
from ._cluster import open_sim_cluster as open_sim_cluster
from ._sim import SimNetwork as SimNetwork
from ._sim import SimNetworkStatistics as SimNetworkStatistics
