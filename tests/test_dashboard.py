"""The dashboard's pure renderer: synthetic snapshots printed into recording consoles."""

from __future__ import annotations

import re
from typing import Any

import pytest
from gossipkv_cli._dashboard import Snapshot, membership_events, render, sparkline
from rich.console import Console

TITLES = ["gossipkv dashboard", "members seen by", "traffic", "data health", "gossip", "events"]


def member(i: int, status: str = "up") -> dict[str, Any]:
    return {
        "name": f"n{i}",
        "address": f"127.0.0.1:{7400 + i}",
        "status": status,
        "reachable": status != "down",
        "up_number": i,
        "age_rank": i,
        "generation": 1_700_000_000_000 + i,
        "heartbeat": 100 + i,
        "phi": 0.25 if status != "down" else 9.5,
        "metadata": {},
    }


def stats(name: str, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": name,
        "replicas": 3,
        "converged": True,
        "storage_keys": 12,
        "partitions_owned": {name: 77},
        "read_repairs": 4,
        "hints_pending": 2,
        "hints_delivered": 5,
        "siblings_seen": 3,
        "dropped_frames": {"stale": 1},
        "max_loop_lag": 0.0042,
    }
    base.update(over)
    return base


def snapshot(n: int, *, down: tuple[int, ...] = (), **over: Any) -> Snapshot:
    doc = {
        "self": "n1",
        "leader": "n1" if n else None,
        "members": [member(i, "down" if i in down else "up") for i in range(1, n + 1)],
    }
    fields: dict[str, Any] = {
        "cluster": "demo",
        "watched": "127.0.0.1:7401",
        "members": doc,
        "stats": {f"n{i}": stats(f"n{i}") for i in range(1, n + 1) if i not in down},
        "ops_per_s": {f"n{i}": 1.5 * i for i in range(1, n + 1) if i not in down},
        "history": {"get": [0, 1, 2, 4, 8], "put": [3, 3, 3], "delete": []},
        "gossip_rounds_per_s": 25.0,
        "gossip_bytes_per_s": 4096.0,
        "events": ["t+1s n2 joined (joining)", "t+2s n2 joining -> up"],
    }
    fields.update(over)
    return Snapshot(**fields)


def text_of(snap: Snapshot, width: int, height: int = 40) -> str:
    console = Console(record=True, width=width, height=height, color_system=None)
    console.print(render(snap, height=height))
    return console.export_text()


@pytest.mark.parametrize("width", [80, 120])
def test_every_panel_renders_and_fits(width: int) -> None:
    out = text_of(snapshot(5, down=(4,)), width)
    for title in TITLES:
        assert title in out, (title, out)
    assert all(len(line) <= width for line in out.splitlines())
    for i in range(1, 6):
        assert f"n{i}" in out
    assert "n1 *" in out  # the leader mark
    assert "DN down" in out and "UN up" in out
    assert "N/R/W 3/2/2" in out and "converged yes" in out
    assert "read repairs" in out and "siblings seen" in out and "hints pending" in out
    assert "stale:4" in out and "4.2 ms" in out
    assert "n2 joining -> up" in out
    assert "▁" in out and "█" in out  # sparkline


def test_80x24_shows_every_member_and_the_newest_events() -> None:
    events = [f"t+{i}s event {i}" for i in range(20)]
    out = text_of(snapshot(5, down=(4,), events=events), 80, height=23)  # Live keeps one row
    lines = out.splitlines()
    assert len(lines) <= 23, out
    assert all(len(line) <= 80 for line in lines)
    for i in range(1, 6):
        assert re.search(rf"│ n{i}\b", out), (i, out)
    assert "more" not in out
    assert "event 19" in out and "event 17" in out  # the newest three at least
    assert "converged yes" in out and "gossip 25.0/s" in out


def test_200x50_uses_the_width_and_the_height() -> None:
    events = [f"t+{i}s event {i}" for i in range(40)]
    out = text_of(snapshot(5, events=events), 200, height=49)
    lines = out.splitlines()
    assert len(lines) <= 49
    table = [ln for ln in lines if re.search(r"│ n\d", ln)]
    assert len(table) == 5
    # The members table spreads over the panel: its last column ends near the right border.
    assert all(len(ln.rstrip("│ ")) > 180 for ln in table), table
    shown = sum(1 for ln in lines if "event" in ln)
    assert shown >= 20, out  # spare rows go to events
    assert "event 39" in out


def test_wide_shows_more_columns_than_narrow() -> None:
    wide = text_of(snapshot(3), 120)
    narrow = text_of(snapshot(3), 80)
    assert "127.0.0.1:7402" in wide and "generation" in wide
    assert "127.0.0.1:7402" not in narrow.split("members seen by")[1].split("traffic")[0]
    assert "generation" not in narrow


@pytest.mark.parametrize("width", [80, 120])
def test_fifty_members_are_truncated_to_fit_forty_rows(width: int) -> None:
    out = text_of(snapshot(50, down=(49, 50)), width, height=40)
    lines = out.splitlines()
    assert len(lines) <= 40, len(lines)
    assert all(len(line) <= width for line in lines)
    assert re.search(r"\+\d+ more", out)
    assert "2 down" in out
    assert "n2 joining -> up" in out  # the newest event stays visible
    assert "n1 *" in out and "n50" not in out
    for title in TITLES:
        assert title in out


@pytest.mark.parametrize("width", [80, 120])
def test_empty_cluster_and_nothing_polled_yet(width: int) -> None:
    out = text_of(Snapshot(cluster="c", watched="127.0.0.1:1"), width)
    assert "(no members yet)" in out and "no statistics yet" in out
    assert "leader (none)" in out and "converged ?" in out
    assert "(no membership changes seen yet)" in out
    out = text_of(snapshot(0), width)
    assert "(no members yet)" in out


def test_without_a_height_bound_every_member_is_listed() -> None:
    console = Console(record=True, width=120, height=25, color_system=None)
    console.print(render(snapshot(50)))
    out = console.export_text()
    assert "n50" in out and "more" not in out


def test_error_line_is_shown() -> None:
    out = text_of(snapshot(3, error="n1 (127.0.0.1:7401) unreachable; now watching n2"), 120)
    assert "unreachable; now watching n2" in out
    long = "n1 (127.0.0.1:7401) unreachable: " + "connection refused " * 20
    out = text_of(snapshot(3, error=long, events=[long]), 80)
    assert out.count("unreachable") == 2 and out.count("refused conn…") == 2  # both cut
    assert all(len(line) <= 80 for line in out.splitlines())


def test_sparkline_scales_to_the_maximum() -> None:
    assert sparkline([0, 4, 8], 10) == "▁▅█"
    assert sparkline([0, 0], 10) == "▁▁"
    assert sparkline([], 10) == ""
    assert len(sparkline(list(range(100)), 30)) == 30


def test_membership_events() -> None:
    old = {"leader": "n1", "members": [member(1), member(2), member(3, "joining")]}
    new = {"leader": "n2", "members": [member(2, "down"), member(3), member(4, "joining")]}
    events = membership_events(old, new, label="t+5s")
    assert events == [
        "t+5s n2 up -> down",
        "t+5s n3 joining -> up",
        "t+5s n4 joined (joining)",
        "t+5s n1 removed",
        "t+5s leader n1 -> n2",
    ]
    assert membership_events(None, new, label="x") == []


def full_stats(name: str, gets: int, rounds: int, generation: int = 1) -> dict[str, Any]:
    return stats(
        name,
        generation=generation,
        kv_gets=gets,
        kv_puts=0,
        kv_deletes=0,
        gossip_rounds=rounds,
        bytes_in=1000 * rounds,
        bytes_out=0,
    )


async def test_state_derives_rates_events_and_follows_another_member(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import trio
    from gossipkv_cli import _dashboard_poll

    async def idle(*_: object) -> None:
        await trio.sleep_forever()

    monkeypatch.setattr(_dashboard_poll, "poll_member", idle)
    doc1 = {"self": "n1", "leader": "n1", "members": [member(1), member(2)]}
    async with trio.open_nursery() as nursery:
        state = _dashboard_poll.DashboardState(
            nursery, peer="127.0.0.1:7401", cluster="c", refresh=1.0, patience=1.0
        )
        state.links["127.0.0.1:7401"].update(full_stats("n1", 10, 5), doc1, now=0.0)
        snap = state.tick(0.0)
        assert set(state.links) == {"127.0.0.1:7401", "127.0.0.1:7402"}  # learned n2
        assert snap.members == doc1 and snap.events == ()
        state.links["127.0.0.1:7401"].update(full_stats("n1", 30, 15), doc1, now=2.0)
        n2_view = {"self": "n2", "leader": "n2", "members": [member(1, "down"), member(2)]}
        state.links["127.0.0.1:7402"].update(full_stats("n2", 0, 0), n2_view, now=2.0)
        snap = state.tick(2.0)
        assert snap.ops_per_s["n1"] == pytest.approx(10.0)
        assert snap.history["get"][-1] == pytest.approx(10.0)
        assert snap.gossip_rounds_per_s == pytest.approx(5.0)
        assert snap.gossip_bytes_per_s == pytest.approx(5000.0)
        # The watched peer stops answering: switch to n2, say so, and derive events from its view.
        state.links["127.0.0.1:7401"].fail("connection refused")
        snap = state.tick(3.0)
        assert snap.watched == "127.0.0.1:7402"
        assert (
            snap.error is not None
            and "unreachable" in snap.error
            and "now watching n2" in snap.error
        )
        assert any("n1 up -> down" in e for e in snap.events)
        assert any("leader n1 -> n2" in e for e in snap.events)
        assert "n1" not in snap.stats
        nursery.cancel_scope.cancel()


def test_traffic_shows_latency_percentiles() -> None:
    snap = snapshot(3, latency_ms={"get": (0.42, 2.1), "put": (1.3, 12.5)})
    narrow = text_of(snap, 80, height=23)
    assert "p99 2.10ms" in narrow and "p99 12.5ms" in narrow
    wide = text_of(snap, 200, height=49)
    assert "p50 0.42 p99 2.10ms" in wide and "p50 1.30 p99 12.5ms" in wide
