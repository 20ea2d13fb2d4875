"""``gossipkv bench gossip``: its event-log parsing, and a small real run (shape only, no timings)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from gossipkv_cli._bench_gossip import (
    Event,
    Fleet,
    _full_view_at,
    _last_listening,
    read_events,
)

from ._peers import cli, loads

pytestmark = pytest.mark.proc


def test_events_are_read_from_both_systems_logs(tmp_path: Path) -> None:
    ours = tmp_path / "n0.log"
    ours.write_text(
        "2026-11-28 21:00:00,123 INFO gossipkv.node: event up n5 gen=17 \n"
        "2026-11-28 21:00:01,500 INFO gossipkv.node: event suspect n5 gen=17 no answer\n"
        "2026-11-28 21:00:02,000 INFO gossipkv.node: event down n5 gen=17 found down by n2\n"
        "peer n0 serving on 127.0.0.1:7700\n"
        "garbage \xff line\n"
    )
    assert [(e.kind, e.node) for e in read_events(ours, serf=False)] == [
        ("up", "n5"),
        ("down", "n5"),
    ]
    theirs = tmp_path / "s0.log"
    theirs.write_text(
        "    2026/11/28 21:00:00 [INFO] serf: EventMemberJoin: s5 127.0.0.1\n"
        "    2026/11/28 21:00:03 [INFO] serf: EventMemberFailed: s5 127.0.0.1\n"
        "    2026/11/28 21:00:04 [INFO] serf: EventMemberUpdate: s5 127.0.0.1\n"
    )
    events = read_events(theirs, serf=True)
    assert [(e.kind, e.node) for e in events] == [("up", "s5"), ("down", "s5")]
    assert events[1].at - events[0].at == dt.timedelta(seconds=3)
    assert read_events(tmp_path / "missing.log", serf=False) == []


def test_the_full_view_is_when_the_last_peer_listed_the_last_other() -> None:
    t = dt.datetime(2026, 11, 28, 21)

    def up(second: int, node: str) -> Event:
        return Event(t + dt.timedelta(seconds=second), "up", node)

    names = ["a", "b", "c"]
    evs = {"a": [up(1, "b"), up(2, "c")], "b": [up(1, "a"), up(5, "c")], "c": [up(3, "a")]}
    assert _full_view_at(evs, names) is None, "c does not list b yet"
    evs["c"].append(up(4, "b"))
    assert _full_view_at(evs, names) == t + dt.timedelta(seconds=5)


def test_the_last_peer_listening_is_read_from_the_peers_logs(tmp_path: Path) -> None:
    lines = {
        "n0": "2026-11-28 21:00:00,100 INFO gossipkv.node: n0 listening on 127.0.0.1:7700 (x)\n",
        "n1": "peer n1 serving\n2026-11-28 21:00:02,500 INFO gossipkv.node: n1 listening on "
        "127.0.0.1:7701 (generation 5, joining)\n"
        "2026-11-28 21:00:03,000 INFO gossipkv.node: event up n0 gen=1 \n",
    }
    evs = {}
    for name, text in lines.items():
        (tmp_path / f"{name}.log").write_text(text)
        evs[name] = read_events(tmp_path / f"{name}.log", serf=False)
    assert [e.kind for e in evs["n1"]] == ["listening", "up"]
    assert _last_listening(evs) == dt.datetime(2026, 11, 28, 21, 0, 2, 500000)
    (tmp_path / "n2.log").write_text("")
    evs["n2"] = read_events(tmp_path / "n2.log", serf=False)
    assert _last_listening(evs) is None, "n2 never listened"


def test_a_small_run_reports_every_figure() -> None:
    out = cli("bench", "gossip", "-n", "3", "--window", "5", "--json", timeout=240)
    assert out.returncode == 0, out.stderr
    ours = loads(out.stdout)["gossipkv"]
    assert ours["peers"] == 3
    assert ours["full_view_s"] is not None, ours
    assert 0 < ours["all_listening_s"] <= ours["full_view_s"], ours
    assert ours["full_view_after_all_listening_s"] >= 0, ours
    assert ours["cpu_percent_per_peer"] >= 0 and ours["bytes_per_peer_per_s"] > 0
    assert ours["false_downs"] == 0, ours
    assert ours["sigkill_seen_by"] == "2/2" and ours["sigkill_down_at_all_s"] is not None
    assert "serf" not in loads(out.stdout)


def test_serf_moments_are_taken_from_the_start_of_their_second(tmp_path: Path) -> None:
    # Serf's log stamps whole seconds: a moment compared with its events must be too, or a full
    # view comes out negative and a down logged in the second of the SIGKILL goes unseen.
    at = dt.datetime(2026, 11, 28, 21, 0, 3, 700_000)
    assert Fleet("serf", 3, tmp_path).stamp(at) == dt.datetime(2026, 11, 28, 21, 0, 3)
    assert Fleet("gossipkv", 3, tmp_path).stamp(at) == at
    # A window's start: what Serf logged earlier in that second is not in the window.
    assert Fleet("serf", 3, tmp_path).stamp(at, until=True) == dt.datetime(2026, 11, 28, 21, 0, 4)
    whole = dt.datetime(2026, 11, 28, 21, 0, 4)
    assert Fleet("serf", 3, tmp_path).stamp(whole, until=True) == whole
