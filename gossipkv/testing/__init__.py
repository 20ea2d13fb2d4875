"""Public testing tools: run gossipkv (or your own Trio app) on a simulated, deterministic net."""

from ._sim import SimNetwork as SimNetwork
from ._sim import SimNetworkStatistics as SimNetworkStatistics
