"""NodeConfig: one typed value holds every argument of Node and open_node, checked when made."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import trio

from gossipkv import (
    ConfigError,
    GossipConfig,
    KVConfig,
    Node,
    NodeConfig,
    open_node,
)
from gossipkv._node_config import NodeOptions

FAST = GossipConfig(gossip_interval=0.05, leave_timeout=1.0)


def test_the_keyword_overrides_are_the_config_fields_with_the_same_types() -> None:
    fields = typing.get_type_hints(NodeConfig)
    options = typing.get_type_hints(NodeOptions)
    assert options == fields
    assert list(options) == [f.name for f in dataclasses.fields(NodeConfig)]


def test_keywords_and_a_config_make_the_same_node() -> None:
    by_keywords = Node(name="a", listen="127.0.0.1:0", seeds=["127.0.0.1:7401"], config=FAST)
    settings = NodeConfig(name="a", listen="127.0.0.1:0", seeds=("127.0.0.1:7401",), config=FAST)
    assert by_keywords.settings == Node(settings).settings == settings
    # Keywords override a given config's fields, and the result is checked again.
    moved = Node(settings, listen="127.0.0.1:7500")
    assert moved.settings == dataclasses.replace(settings, listen="127.0.0.1:7500")
    with pytest.raises(ConfigError):
        Node(settings, seeds=["127.0.0.1"])
    with pytest.raises(TypeError):
        Node(settings, bogus=1)  # type: ignore[call-arg]


def test_what_a_node_reports_in_force_comes_from_its_config() -> None:
    node = Node(NodeConfig(cluster="blue", config=FAST, kv=KVConfig(r=1, w=1)))
    assert node.config == dataclasses.replace(FAST, cluster="blue")
    assert node.kv_config == KVConfig(r=1, w=1)
    assert node.limits == node.settings.limits
    shown = node.effective_config()
    assert shown["node"]["cluster"] == "blue"  # type: ignore[index]
    assert shown["kv"]["r"] == 1  # type: ignore[index]


def test_the_cluster_argument_names_the_cluster_of_the_membership_settings() -> None:
    assert NodeConfig(config=GossipConfig(cluster="x")).config.cluster == "gossipkv"
    assert NodeConfig(cluster="y", config=GossipConfig(cluster="x")).config.cluster == "y"
    renamed = dataclasses.replace(NodeConfig(cluster="y"), cluster="z")
    assert renamed.config.cluster == "z"


def test_seeds_are_kept_as_a_tuple_and_one_string_is_refused() -> None:
    assert NodeConfig(seeds=["127.0.0.1:1", "127.0.0.1:2"]).seeds == ("127.0.0.1:1", "127.0.0.1:2")
    with pytest.raises(ConfigError, match="not one string"):
        NodeConfig(seeds="127.0.0.1:1")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "client"}, "reserved"),
        ({"name": "a/b"}, "printable"),
        ({"listen": "127.0.0.1:7400", "seeds": ["127.0.0.1:7400"]}, "own listen address"),
        ({"name": "a", "replace": "a", "seeds": ["127.0.0.1:1"]}, "cannot replace itself"),
        ({"replace": "b"}, "needs --seed"),
        ({"request_timeout": 0}, "timeouts"),
        ({"fsync": "sometimes"}, "sometimes"),
        ({"kv": KVConfig(r=4)}, "must not exceed N=3"),
    ],
)
def test_a_bad_setting_fails_where_the_config_is_made(
    kwargs: dict[str, typing.Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        NodeConfig(**kwargs)


def test_none_still_means_the_default_for_the_settings_groups() -> None:
    untyped: dict[str, typing.Any] = {"config": None, "kv": None, "limits": None}
    assert NodeConfig(**untyped) == NodeConfig()


async def test_open_node_takes_a_config_and_overrides() -> None:
    settings = NodeConfig(name="solo", listen="127.0.0.1:7400", config=FAST)
    with trio.fail_after(20):
        async with open_node(settings, listen="127.0.0.1:0") as node:
            assert node.name == "solo"
            assert node.settings.listen == "127.0.0.1:0"
            assert node.address != "127.0.0.1:7400"
