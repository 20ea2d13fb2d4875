"""A node's configuration: every argument of :class:`~gossipkv.Node` in one typed, frozen value.

:class:`NodeConfig` holds each setting with its default and checks them all when it is made, so
a bad address or setting fails where it was written, before anything starts. :class:`Node` and
:func:`open_node` take one, and keyword overrides of its fields typed by :class:`NodeOptions`
(``open_node(name="a", listen=...)`` is ``open_node(NodeConfig(name="a", listen=...))``).

Pattern: one declaration of the settings that the node, its factory and the operator's
``config show`` all read.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

from . import _admin
from ._errors import ConfigError
from ._limits import NetworkLimits
from ._persist import NodeStore
from ._replica_store import KVConfig
from ._types import Address
from .membership._gossiper import GossipConfig
from .storage import DEFAULT_LIMITS, FsyncPolicy, StorageEngine, StorageLimits
from .transport._base import Transport
from .transport._tls import TLSConfig

#: Milliseconds since the epoch (the wall clock; faked in simulation).
WallClock = Callable[[], int]

#: Names a member may not take: ``client`` is what every client says in its hello.
RESERVED_NAMES = frozenset({"client"})


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeConfig:
    """Everything a :class:`Node` is started with; checked in full when it is made.

    ``NodeConfig(name="a", listen="127.0.0.1:7400", seeds=["10.0.0.5:7400"])``; change a copy
    with :func:`dataclasses.replace`, or pass it to :func:`open_node` with overrides:
    ``open_node(config, listen="127.0.0.1:0")``.

    Attributes:
      name: stable node id, 1..128 characters. Defaults to the name persisted in ``data_dir``,
        else the advertised ``host:port``.
      listen: ``host:port`` to bind (port 0 picks a free port).
      seeds: addresses to join through (any sequence of strings; kept as a tuple). With none,
        the node starts a new cluster; with some, it keeps trying them until it joins (it never
        forms a second cluster by itself).
      data_dir: where the identity, generation, accepted decisions (``membership.cbor``), the data
        (``data/``) and the hints (``hints/``) are kept. ``None``: everything in memory.
      cluster: cluster name; peers and clients of another cluster are refused.
      config: membership tuning (:class:`GossipConfig`); its ``cluster`` is replaced by
        ``cluster``.
      transport: defaults to TCP; tests pass a ``gossipkv.testing.SimNetwork`` transport.
      advertise: the address others should use, when it differs from ``listen``.
      rng: randomness for target choice (seeded in simulation).
      wall_clock: milliseconds since the epoch (faked in simulation).
      store: where to persist the peer record (overrides ``data_dir``).
      bootstrap: start a new cluster even with seeds (default: only when there are none).
      request_timeout: seconds a gossip exchange or a handshake may take.
      connect_timeout: seconds a connection attempt to another member may take.
      kv: data-path defaults (:class:`KVConfig`); ``r`` and ``w`` may not exceed
        ``config.replicas``.
      fsync: the data dir's fsync policy: ``"batch"`` (default: concurrent writes share one fsync
        and are acknowledged after it), ``"always"`` (one fsync per write) or ``"none"``
        (acknowledged once the OS has the bytes: survives ``kill -9``, not a power cut).
      storage: the replica's storage engine, instead of one opened in ``data_dir``.
      hints: the hinted-handoff storage engine, instead of one opened in ``data_dir``.
      limits: connection, frame and subscription limits (:class:`NetworkLimits`); the frame
        deadline and receive budget are applied to ``transport``.
      storage_limits: what one write may store and one read returns (key and value size,
        value nesting, siblings, bytes per key; :class:`StorageLimits`). Every peer of a
        cluster should use the same limits.
      replace: the name of a dead member this new one takes over (``gossipkv peer
        --replace``): the leader hands it exactly that member's partitions (no other partition
        moves) and removes the dead one; it fills them from the other owners and serves once
        they are full. Refused (:exc:`ConfigError` from :meth:`Node.run`) when that member is
        unknown or alive. Ignored by a member restarted with its data dir.
      tls: mutual TLS on every connection (:class:`TLSConfig`, e.g.
        ``TLSConfig.from_dir(d, name)``); ``None``: plaintext. With TLS a member's certificate
        must name it and carry the ``peer`` role, clients may not send member messages, and
        operator calls (leave, remove, repair, set_metadata, certificate reload) need the
        ``operator`` or ``peer`` role.

    Raises:
      ConfigError: at construction, for a bad address, seed list or setting.

    ``transport``, ``rng``, ``wall_clock``, ``store``, ``storage`` and ``hints`` are parts a node
    uses rather than settings (tests and embedders inject them): a config that holds one is for
    one node at a time.
    """

    name: str | None = None
    listen: str = "127.0.0.1:7400"
    seeds: Sequence[str] = ()
    data_dir: str | os.PathLike[str] | None = None
    cluster: str = "gossipkv"
    config: GossipConfig = field(default_factory=GossipConfig)
    transport: Transport | None = None
    advertise: str | None = None
    rng: random.Random | None = None
    wall_clock: WallClock | None = None
    store: NodeStore | None = None
    bootstrap: bool | None = None
    request_timeout: float = 2.0
    connect_timeout: float = 1.0
    kv: KVConfig = field(default_factory=KVConfig)
    fsync: str = "batch"
    storage: StorageEngine | None = None
    hints: StorageEngine | None = None
    limits: NetworkLimits = field(default_factory=NetworkLimits)
    storage_limits: StorageLimits = DEFAULT_LIMITS
    replace: str | None = None
    tls: TLSConfig | None = None

    def __post_init__(self) -> None:
        # ``None`` meant "the default" before NodeConfig; untyped callers may still pass it.
        defaults: dict[str, object] = {
            "config": GossipConfig(),
            "kv": KVConfig(),
            "limits": NetworkLimits(),
            "storage_limits": DEFAULT_LIMITS,
        }
        for name, default in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if isinstance(self.seeds, str):
            raise ConfigError("seeds must be a list of 'host:port' strings, not one string")
        object.__setattr__(self, "seeds", tuple(self.seeds))
        try:
            Address.parse(self.listen)
            for seed in self.seeds:
                Address.parse(seed)
            if self.advertise is not None:
                Address.parse(self.advertise)
            if self.config.cluster != self.cluster:
                object.__setattr__(
                    self, "config", dataclasses.replace(self.config, cluster=self.cluster)
                )
            self.config.validate()
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.name is not None:
            check_member_name(self.name)
        if self.listen in self.seeds and not self.listen.endswith(":0"):
            raise ConfigError(f"seed {self.listen} is this peer's own listen address")
        if self.replace is not None:
            check_member_name(self.replace)
            if self.replace == self.name:
                raise ConfigError("a member cannot replace itself")
            if not self.seeds:
                raise ConfigError("--replace needs --seed: the cluster to join")
        if not (self.request_timeout > 0 and self.connect_timeout > 0):
            raise ConfigError("timeouts must be > 0")
        try:
            self.limits.validate()
            self.kv.validate()
            self.storage_limits.validate()
            FsyncPolicy(self.fsync)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if self.kv.r > self.config.replicas or self.kv.w > self.config.replicas:
            raise ConfigError(
                f"r={self.kv.r} and w={self.kv.w} must not exceed N={self.config.replicas}"
            )
        if self.transport is not None and self.tls is not None:
            raise ConfigError("pass tls to the transport you give, not to the node")


class NodeOptions(TypedDict, total=False):
    """The fields of :class:`NodeConfig` as keyword arguments of :class:`Node` and
    :func:`open_node` (each overrides the config's; a test keeps the two the same)."""

    name: str | None
    listen: str
    seeds: Sequence[str]
    data_dir: str | os.PathLike[str] | None
    cluster: str
    config: GossipConfig
    transport: Transport | None
    advertise: str | None
    rng: random.Random | None
    wall_clock: WallClock | None
    store: NodeStore | None
    bootstrap: bool | None
    request_timeout: float
    connect_timeout: float
    kv: KVConfig
    fsync: str
    storage: StorageEngine | None
    hints: StorageEngine | None
    limits: NetworkLimits
    storage_limits: StorageLimits
    replace: str | None
    tls: TLSConfig | None


def node_config(settings: NodeConfig | None, overrides: NodeOptions) -> NodeConfig:
    """``settings`` (default: a new :class:`NodeConfig`) with ``overrides`` in place.

    Raises:
      ConfigError: the result is not a valid configuration.
      TypeError: an override names no field.
    """
    if settings is None:
        return NodeConfig(**overrides)
    return dataclasses.replace(settings, **overrides) if overrides else settings


def effective_config(
    settings: NodeConfig, *, name: str | None, address: str | None, tls: bool
) -> dict[str, object]:
    """The plain map ``gossipkv config show`` prints: ``node`` (name, addresses, seeds, data
    dir, fsync, TLS, log level), ``gossip``, ``kv``, ``limits`` and ``storage_limits``."""
    return {
        "node": {
            "name": name,
            "listen": settings.listen,
            "address": address,
            "advertise": settings.advertise,
            "seeds": list(settings.seeds),
            "data_dir": None if settings.data_dir is None else str(settings.data_dir),
            "cluster": settings.config.cluster,
            "fsync": settings.fsync,
            "tls": tls,
            "log_level": _admin.current_log_level(),
        },
        "gossip": _admin.plain_config(settings.config),
        "kv": _admin.plain_config(settings.kv),
        "limits": _admin.plain_config(settings.limits),
        "storage_limits": _admin.plain_config(settings.storage_limits),
    }


def check_member_name(name: str) -> None:
    """Refuse a member name that could not work: empty or over 128 characters, reserved, or
    holding a character that separates fields in actor ids (``/``) or hint keys, or a control
    character.

    Raises:
      ConfigError: naming the problem.
    """
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise ConfigError("a member name must be 1..128 characters")
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is a reserved name (clients use it); choose another --name")
    if "/" in name or not name.isprintable() or name != name.strip():
        raise ConfigError(
            f"member name {name!r} must be printable, without '/' or surrounding spaces"
        )
