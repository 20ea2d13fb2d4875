"""Fixtures of the abuse tier: real peer clusters with data dirs, shared by a module's tests.

The clusters are started by sync fixtures (each runs its own ``trio.run`` to wait for them), so
a module pays for one cluster unless a test leaves it unusable; then the next test gets a fresh
one (see ``ClusterPool``). Every process is killed at teardown.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import _expect
from ._cluster import Cluster, ClusterPool


@pytest.fixture(scope="module")
def pool3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterPool]:
    pool = ClusterPool(tmp_path_factory.mktemp("abuse3"), 3, bloat=_expect.REUSE_BLOAT_FACTOR)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(scope="module")
def pool4(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterPool]:
    pool = ClusterPool(tmp_path_factory.mktemp("abuse4"), 4, bloat=_expect.REUSE_BLOAT_FACTOR)
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def cluster(pool3: ClusterPool) -> Cluster:
    """A formed 3-peer cluster (N=3: every peer is a replica of every key), idle RSS measured."""
    return pool3.get()


@pytest.fixture
def cluster4(pool4: ClusterPool) -> Cluster:
    """A formed 4-peer cluster (each key has 3 of the 4 as replicas), idle RSS measured."""
    return pool4.get()
