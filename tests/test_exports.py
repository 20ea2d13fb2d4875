"""The public surface is pinned: adding or removing a public name is a deliberate change here."""

from __future__ import annotations

import gossipkv
import gossipkv.testing

PUBLIC = {
    "Change", "Client", "ClusterNotReady", "ConfigError", "ConnectionClosed", "DataDirError",
    "DecodeError", "GetResult", "GossipConfig", "GossipKVError", "HandshakeError",
    "InvalidContext", "InvalidKey", "KVConfig", "KeyTooLarge", "MemberView", "MembershipEvent",
    "Node", "NodeClosedError", "NodeStatistics", "Overloaded", "PROTOCOL_VERSION", "PutResult",
    "QuorumNotReached", "RemoteError", "StorageError", "TooManySiblings", "TransportError",
    "Unavailable", "ValueNotEncodable", "ValueTooLarge", "__version__", "members_body",
    "open_client", "open_node",
}  # fmt: skip

TESTING = {
    "EchoClient", "SimCluster", "SimNetwork", "SimNetworkStatistics", "open_echo_client",
    "open_echo_server_process", "open_sim_cluster", "serve_echo",
}  # fmt: skip


def test_gossipkv_public_names_are_pinned() -> None:
    assert set(gossipkv.__all__) == PUBLIC
    assert all(hasattr(gossipkv, name) for name in PUBLIC)


def test_testing_public_names_are_pinned() -> None:
    public = {n for n in dir(gossipkv.testing) if not n.startswith("_")}
    assert public == TESTING


def test_every_public_error_is_a_gossipkv_error() -> None:
    for name in PUBLIC:
        obj = getattr(gossipkv, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, gossipkv.GossipKVError), name


def test_public_callables_and_classes_are_documented() -> None:
    for name in PUBLIC - {"PROTOCOL_VERSION", "__version__"}:
        doc = (getattr(gossipkv, name).__doc__ or "").strip()
        # A dataclass without a docstring gets its signature as __doc__: that does not count.
        assert doc and not doc.startswith(f"{name}("), f"{name} has no docstring"
