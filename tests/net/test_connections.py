"""ConnectionTable and NetworkLimits on their own: admission decisions, counts, validation."""

from __future__ import annotations

from collections import Counter

import pytest

from gossipkv import ConfigError, NetworkLimits, Node
from gossipkv._connections import ConnectionTable
from gossipkv._limits import FD_HEADROOM_MIN, effective_max_connections


def table(**limits: int) -> tuple[ConnectionTable, Counter[str]]:
    refusals: Counter[str] = Counter()
    return ConnectionTable(NetworkLimits(**limits), refusals), refusals


def test_per_source_cap_counts_clients_and_hellos_but_not_known_members() -> None:
    conns, refusals = table(max_connections_per_source=2)
    a = conns.accept("10.0.0.1:5000")
    b = conns.accept("10.0.0.1:5001")
    assert a is not None and b is not None
    assert conns.accept("10.0.0.1:5002") is None
    assert refusals == {"source_limit": 1}
    assert conns.accept("10.0.0.2:5000") is not None  # another source
    # A member identified by its hello stops counting against its source...
    assert conns.identify(a, "n2", known_member=True)
    assert conns.accept("10.0.0.1:5003") is not None
    # ...a client or an unknown name does not.
    assert conns.identify(b, "client", known_member=False)
    assert conns.accept("10.0.0.1:5004") is None
    assert refusals == {"source_limit": 2}


def test_total_and_per_member_caps_and_release() -> None:
    conns, refusals = table(max_connections=3, max_connections_per_peer=1)
    first = conns.accept("10.0.0.1:1")
    second = conns.accept("10.0.0.2:1")
    assert first is not None and second is not None
    assert conns.identify(first, "n2", known_member=True)
    assert not conns.identify(second, "n2", known_member=True)
    assert refusals == {"peer_limit": 1}
    third = conns.accept("10.0.0.3:1")
    assert third is not None
    assert conns.accept("10.0.0.4:1") is None
    assert refusals["connection_limit"] == 1
    for admission in (first, second, third):
        conns.release(admission)
    assert conns.accepted == 0
    again = conns.accept("10.0.0.1:2")
    assert again is not None and conns.identify(again, "n2", known_member=True)


def test_watch_refusals_name_the_limit() -> None:
    conns, refusals = table(max_watches_per_connection=2, max_watches=3)
    assert conns.watch_refusal(1) is None
    assert "one connection" in (conns.watch_refusal(2) or "")
    conns.watches = 3
    assert "this peer" in (conns.watch_refusal(0) or "")
    assert refusals == {"watch_limit": 2}


def test_the_connection_cap_fits_the_descriptor_limit() -> None:
    assert effective_max_connections(1024, None, 50) == 1024
    # ulimit -n 1024 with 40 descriptors open: 1024 - 40 - 128.
    assert effective_max_connections(1024, 1024, 40) == 1024 - 40 - FD_HEADROOM_MIN
    assert effective_max_connections(1024, 65536, 40) == 1024
    assert effective_max_connections(1024, 100, 90) == 1  # never zero


@pytest.mark.parametrize(
    "limits",
    [
        {"max_frame": 0},
        {"max_connections": -1},
        {"idle_timeout": 0},
        {"frame_timeout": float("nan")},
        {"max_hello_frame": 2 * 1024 * 1024, "max_frame": 1024 * 1024},
        {"max_watches": True},
    ],
)
def test_bad_limits_fail_at_call_time(limits: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Node(limits=NetworkLimits(**limits))  # type: ignore[arg-type]
