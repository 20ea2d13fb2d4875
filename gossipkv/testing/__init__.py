"""Public testing tools: run gossipkv (or your own Trio app) on a simulated, deterministic net."""

from ._cluster import SimCluster as SimCluster, open_sim_cluster as open_sim_cluster
from ._sim import SimNetwork as SimNetwork, SimNetworkStatistics as SimNetworkStatistics
