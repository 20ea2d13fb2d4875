"""The live dashboard's pure half: a frozen :class:`Snapshot` of what was polled, and ``render``.

Nothing here does I/O or reads a clock: the poller (``_dashboard_poll``) builds a snapshot and
``render(snapshot)`` turns it into a rich renderable that lays itself out for the width (and
height) of the console it is printed on, so the same function serves ``Live``, ``--once`` and
tests (``Console(record=True, width=W)``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from gossipkv import NodeStatistics

from ._render import STATUS_CODE, STATUS_STYLE

#: Operations whose rates the traffic panel draws (statistics counter -> label).
OPERATIONS = {"kv_gets": "get", "kv_puts": "put", "kv_deletes": "delete"}
STATUS_ORDER = ("up", "joining", "leaving", "left", "down", "removed")
SPARK = "▁▂▃▄▅▆▇█"
#: Below this many columns the dashboard drops columns and stacks panels.
WIDE = 110


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one dashboard frame shows.

    Args:
      cluster: the cluster name.
      watched: address of the peer whose members document is shown.
      members: that peer's ``members --json`` document (``None``: none obtained yet).
      stats: ``statistics()`` dicts of every member that answered, by member name.
      ops_per_s: get+put+delete rate per member name (from counter deltas between polls).
      history: recent cluster-wide ops/s per operation label, oldest first.
      gossip_rounds_per_s, gossip_bytes_per_s: cluster-wide gossip rates (``None``: unknown yet).
      events: recent membership events, oldest first (already formatted).
      error: one line to show in red (e.g. the watched peer is gone), or ``None``.
      notice: one line of progress (e.g. peers still starting), or ``None``; while it is set,
        ``error`` is not shown (nothing answers yet, as expected).
      latency_ms: p50 and p99 (ms) of the gets and puts coordinated during the last interval,
        every member's histograms added up.
      r, w: the default read and write quorums clients use (the watched member's own, when its
        statistics say).
    """

    cluster: str
    watched: str
    members: Mapping[str, Any] | None = None
    stats: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    ops_per_s: Mapping[str, float] = field(default_factory=dict)
    history: Mapping[str, Sequence[float]] = field(default_factory=dict)
    gossip_rounds_per_s: float | None = None
    gossip_bytes_per_s: float | None = None
    events: Sequence[str] = ()
    error: str | None = None
    notice: str | None = None
    #: p50 and p99 in ms of the last interval's coordinated gets and puts (cluster-wide).
    latency_ms: Mapping[str, tuple[float | None, float | None]] = field(default_factory=dict)
    r: int = 2
    w: int = 2


def render(snapshot: Snapshot, *, height: int | None = None) -> Dashboard:
    """The dashboard for ``snapshot``, laid out for the console's width when printed.

    ``height`` bounds the rows (the terminal's height under ``Live``); ``None``: no bound, every
    member is listed (``--once``).
    """
    return Dashboard(snapshot, height)


class Dashboard:
    """A renderable that picks its layout from the console's width (and a height bound)."""

    def __init__(self, snapshot: Snapshot, height: int | None = None) -> None:
        self.snapshot = snapshot
        self.height = height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield frame(self.snapshot, width=options.max_width, height=self.height)


#: Rows of the bottom panels: wide (three panels side by side), narrow (two, then a gossip
#: line) and compact (two small panels; the gossip line moves into the header).
_BOTTOM_ROWS = {"wide": 9, "narrow": 12, "compact": 5}
#: The fewest newest events a bounded frame keeps visible.
MIN_EVENTS = 3
#: Events shown when the height is unbounded (``--once``).
ONCE_EVENTS = 10


def frame(snap: Snapshot, *, width: int, height: int | None) -> Group:
    """The panels of one frame laid out for ``width`` x ``height`` cells (``None``: unbounded).

    Every member gets a row and at least :data:`MIN_EVENTS` newest events stay visible when the
    height allows both; a short screen (80x24) switches to the compact layout, a tall one gives
    its spare rows to more events, a wide one spreads the members table across."""
    wide = width >= WIDE
    rows = list((snap.members or {}).get("members", []))
    members_rows = max(1, len(rows))
    header_rows = 3 + (1 if _header_error(snap) else 0)
    layout = "wide" if wide else "narrow"
    if height is not None:
        full = header_rows + 4 + members_rows + _BOTTOM_ROWS[layout] + MIN_EVENTS + 2
        if full > height:
            layout = "compact"
    if layout == "compact":
        header_rows = 4  # the gossip line joins; a notice or error moves into the border
    if height is None:
        member_rows, events_rows = members_rows, ONCE_EVENTS
    else:
        spare = height - header_rows - 4 - _BOTTOM_ROWS[layout] - 2
        member_rows = max(3, min(members_rows, spare - MIN_EVENTS))
        events_rows = max(1, spare - member_rows)
    return Group(
        header_panel(snap, gossip_line=layout == "compact", wide=wide),
        members_panel(snap, wide=wide, max_rows=member_rows),
        _bottom(snap, layout, width),
        events_panel(snap, rows=events_rows),
    )


# --- header --------------------------------------------------------------------------------


def _watched_stats(snap: Snapshot) -> Mapping[str, Any] | None:
    if snap.members is None:
        return None
    return snap.stats.get(str(snap.members.get("self")))


def _header_error(snap: Snapshot) -> str | None:
    return snap.notice or snap.error


def header_panel(snap: Snapshot, *, gossip_line: bool = False, wide: bool = True) -> Panel:
    doc = snap.members or {}
    mine = _watched_stats(snap)
    counts = Counter(str(m.get("status")) for m in doc.get("members", []))
    line = Text()
    line.append(f"{snap.cluster}", style="bold")
    line.append(f"  watching {doc.get('self', '?')}" + (f" ({snap.watched})" if wide else ""))
    line.append("  leader ")
    line.append(str(doc.get("leader") or "(none)"), style="bold")
    line.append(f"  N/R/W {_quorum(mine, snap)}")
    line.append("  members " if wide else "  ")
    line.append(
        " ".join(f"{s}:{counts[s]}" for s in STATUS_ORDER if counts[s]) or "none",
    )
    converged = mine.get("converged") if mine else None
    line.append("  converged ")
    if converged is None:
        line.append("?")
    else:
        line.append("yes" if converged else "no", style="green" if converged else "yellow")
    line.no_wrap, line.overflow = True, "ellipsis"
    body: list[Text] = [line]
    if gossip_line:
        body.append(Text(_gossip_summary(snap), no_wrap=True, overflow="ellipsis"))
    alert: Text | None = None
    if snap.notice:
        alert = Text(snap.notice, style="bold cyan", no_wrap=True, overflow="ellipsis")
    elif snap.error:
        alert = Text(snap.error, style="bold red", no_wrap=True, overflow="ellipsis")
    title = "gossipkv dashboard" + ("" if wide else f" of {snap.watched}")
    if alert is not None and gossip_line:
        # The compact (80x24) layout: the alert rides in the bottom border, costing no row.
        return Panel(
            Group(*body),
            title=title,
            title_align="left",
            subtitle=alert,
            subtitle_align="left",
            box=box.ROUNDED,
        )
    if alert is not None:
        body.append(alert)
    return Panel(Group(*body), title=title, title_align="left", box=box.ROUNDED)


def _quorum(mine: Mapping[str, Any] | None, snap: Snapshot) -> str:
    """``N/R/W`` as writes really run: a partition with fewer owners than N caps R and W."""
    if not mine or mine.get("replicas") is None:
        return f"?/{snap.r}/{snap.w}"
    n = int(mine["replicas"])
    r = int(mine.get("read_quorum") or snap.r)
    w = int(mine.get("write_quorum") or snap.w)
    eff = int(mine.get("replicas_effective") or n)
    if eff < n:
        return f"{eff}/{min(r, eff)}/{min(w, eff)} (of {n}/{r}/{w})"
    return f"{n}/{r}/{w}"


# --- members -------------------------------------------------------------------------------


def members_panel(snap: Snapshot, *, wide: bool, max_rows: int) -> Panel:
    doc = snap.members or {}
    leader = doc.get("leader")
    rows: list[Mapping[str, Any]] = list(doc.get("members", []))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=wide, show_edge=False)
    columns = (
        ["name", "address", "status", "reach", "age", "generation", "hb", "phi"]
        if wide
        else ["name", "status", "reach", "age", "phi"]
    )
    columns += ["keys", "parts", "ops/s"]
    for col in columns:
        table.add_column(col, no_wrap=True, justify="right" if col in _NUMERIC else "left")
    shown = rows if len(rows) <= max_rows else rows[: max_rows - 1]
    for m in shown:
        table.add_row(*_member_cells(snap, m, leader, wide))
    if len(shown) < len(rows):
        hidden = rows[len(shown) :]
        down = sum(1 for m in hidden if m.get("status") == "down")
        table.add_row(
            Text(f"+{len(hidden)} more", style="italic"),
            *(["..."] if wide else []),
            Text(f"{down} down", style="red") if down else "",
            *[""] * (len(columns) - (3 if wide else 2)),
        )
    if not rows:
        table.add_row(Text("(no members yet)", style="italic"), *[""] * (len(columns) - 1))
    return Panel(
        table,
        title=f"members seen by {doc.get('self', '?')}   * leader",
        title_align="left",
        box=box.ROUNDED,
    )


_NUMERIC = {"age", "generation", "hb", "phi", "keys", "parts", "ops/s"}


def _member_cells(
    snap: Snapshot, m: Mapping[str, Any], leader: object, wide: bool
) -> list[str | Text]:
    name = str(m.get("name"))
    status = str(m.get("status"))
    phi = m.get("phi")
    st = snap.stats.get(name)
    keys = str(st.get("storage_keys", "-")) if st else "-"
    owned = (st.get("partitions_owned") or {}) if st else {}
    parts = str(owned.get(name, "-")) if st else "-"
    ops = snap.ops_per_s.get(name)
    cells: list[str | Text] = [
        Text(name + (" *" if name == leader else ""), style="bold" if name == leader else ""),
    ]
    if wide:
        cells.append(str(m.get("address") or "-"))
    cells += [
        Text(f"{STATUS_CODE.get(status, '?')} {status}", style=STATUS_STYLE.get(status, "")),
        "yes" if m.get("reachable") else Text("no", style="red"),
        str(m.get("age_rank") or "-"),
    ]
    if wide:
        cells += [str(m.get("generation")), str(m.get("heartbeat"))]
    cells += [
        "-" if phi is None else f"{phi:.2f}",
        keys,
        parts,
        "-" if ops is None else f"{ops:.1f}",
    ]
    return cells


# --- traffic, data health, gossip --------------------------------------------------------------


def sparkline(values: Sequence[float], width: int) -> str:
    """The last ``width`` values as block characters, scaled from 0 to their maximum."""
    recent = list(values)[-width:] if width > 0 else []
    if not recent:
        return ""
    top = max(recent)
    if top <= 0:
        return SPARK[0] * len(recent)
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, round(v / top * last))] for v in recent)


def traffic_panel(
    snap: Snapshot, *, spark_width: int, compact: bool = False, p50: bool = False
) -> Panel:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for label in OPERATIONS.values():
        series = snap.history.get(label, ())
        now = f"{series[-1]:.1f}/s" if series else "-"
        # Deletes are writes: the put histogram holds them.
        mid, p99 = snap.latency_ms.get(label, (None, None))
        lat = "" if label == "delete" or p99 is None else f"p99 {_ms(p99)}ms"
        if p50 and mid is not None and label != "delete":
            lat = f"p50 {_ms(mid)} {lat}"
        grid.add_row(label, Text(sparkline(series, spark_width), style="cyan"), now, lat)
    total = sum(snap.ops_per_s.values()) if snap.ops_per_s else None
    all_rate = "-" if total is None else f"{total:.1f}/s"
    if compact:
        return Panel(grid, title=f"traffic: all {all_rate}", title_align="left", box=box.ROUNDED)
    grid.add_row("all", "", all_rate, "")
    return Panel(grid, title="traffic (ops/s)", title_align="left", box=box.ROUNDED)


def _ms(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


#: The declared statistics the panels read, by name (an undeclared name is a KeyError).
DECLARED = {d.name: d for d in NodeStatistics.declarations()}


def _sum(stats: Iterable[Mapping[str, Any]], key: str) -> int:
    """A declared counter or gauge added up over the members that answered."""
    assert DECLARED[key].kind in ("counter", "gauge"), key
    return sum(int(s.get(key) or 0) for s in stats)


def health_panel(snap: Snapshot, *, compact: bool = False) -> Panel:
    stats = list(snap.stats.values())
    if compact and stats:
        return _compact_health(stats)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    if not stats:
        grid.add_row("no statistics yet", "")
    else:
        pending = _sum(stats, "hints_pending")
        grid.add_row("read repairs", str(_sum(stats, "read_repairs")))
        grid.add_row("hints pending", Text(str(pending), style="yellow" if pending else ""))
        grid.add_row("hints delivered", str(_sum(stats, "hints_delivered")))
        grid.add_row("anti-entropy repairs", str(_sum(stats, "anti_entropy_keys_repaired")))
        moving = sum(len(s.get("transfers") or []) for s in stats)
        under = max((int(s.get("under_replicated") or 0) for s in stats), default=0)
        grid.add_row(
            "transfers / under-rep.",
            Text(f"{moving} / {under}", style="yellow" if moving or under else ""),
        )
        grid.add_row("siblings seen", str(_sum(stats, "siblings_seen")))
        grid.add_row("keys (replicas)", str(_sum(stats, "storage_keys")))
    return Panel(grid, title="data health", title_align="left", box=box.ROUNDED)


def _compact_health(stats: list[Mapping[str, Any]]) -> Panel:
    """Data health in three rows of two figures (the 80x24 layout)."""
    grid = Table.grid(padding=(0, 1))
    for justify in ("left", "right", "left", "right"):
        grid.add_column(no_wrap=True, justify=justify)
    pending = _sum(stats, "hints_pending")
    moving = sum(len(s.get("transfers") or []) for s in stats)
    under = max((int(s.get("under_replicated") or 0) for s in stats), default=0)
    grid.add_row(
        "repairs", str(_sum(stats, "read_repairs")),
        "anti-entropy", str(_sum(stats, "anti_entropy_keys_repaired")),
    )  # fmt: skip
    grid.add_row(
        "hints pending", Text(str(pending), style="yellow" if pending else ""),
        "delivered", str(_sum(stats, "hints_delivered")),
    )  # fmt: skip
    grid.add_row(
        "moving/under", Text(f"{moving}/{under}", style="yellow" if moving or under else ""),
        "siblings", str(_sum(stats, "siblings_seen")),
    )  # fmt: skip
    return Panel(grid, title="data health", title_align="left", box=box.ROUNDED)


def _dropped(stats: Iterable[Mapping[str, Any]], field: str = "dropped_frames") -> Counter[str]:
    assert DECLARED[field].kind == "counters", field
    total: Counter[str] = Counter()
    for s in stats:
        for reason, n in (s.get(field) or {}).items():
            total[str(reason)] += int(n)
    return total


def _fmt_bytes(rate: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if rate < 1024:
            return f"{rate:.0f} {unit}/s"
        rate /= 1024
    return f"{rate:.1f} GiB/s"


def _gossip_figures(snap: Snapshot) -> dict[str, str]:
    stats = list(snap.stats.values())
    dropped = _dropped(stats)
    # What members refused to protect themselves (connection caps, timeouts, watch caps).
    refused = _dropped(stats, "refusals")
    lag_member = max(stats, key=lambda s: float(s.get("max_loop_lag") or 0.0), default=None)
    return {
        "rounds": "-" if snap.gossip_rounds_per_s is None else f"{snap.gossip_rounds_per_s:.1f}/s",
        "bytes": "-" if snap.gossip_bytes_per_s is None else _fmt_bytes(snap.gossip_bytes_per_s),
        "dropped": ", ".join(f"{k}:{v}" for k, v in dropped.most_common(3)) if dropped else "none",
        "refused": ", ".join(f"{k}:{v}" for k, v in refused.most_common(3)) if refused else "none",
        "lag": (
            f"{float(lag_member.get('max_loop_lag') or 0.0) * 1000:.1f} ms ({lag_member.get('name')})"
            if lag_member
            else "-"
        ),
    }


def _gossip_summary(snap: Snapshot) -> str:
    g = _gossip_figures(snap)
    return (
        f"gossip {g['rounds']}  bytes {g['bytes']}  dropped {g['dropped']}  max loop lag {g['lag']}"
    )


def gossip_panel(snap: Snapshot, *, compact: bool = False) -> Panel:
    g = _gossip_figures(snap)
    if compact:
        body: Table | Text = Text(
            f"rounds {g['rounds']}  bytes {g['bytes']}  dropped {g['dropped']}  "
            f"max loop lag {g['lag']}"
        )
    else:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row("rounds", g["rounds"])
        grid.add_row("bytes in+out", g["bytes"])
        grid.add_row("dropped", g["dropped"])
        grid.add_row("refused", g["refused"])
        grid.add_row("max loop lag", g["lag"])
        body = grid
    return Panel(body, title="gossip", title_align="left", box=box.ROUNDED)


def _bottom(snap: Snapshot, layout: str, width: int = 0) -> Table | Group:
    if layout == "wide":
        roomy = width >= 160
        row = Table.grid(expand=True, padding=(0, 1))
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_row(
            traffic_panel(snap, spark_width=24 if roomy else 10, p50=roomy),
            health_panel(snap),
            gossip_panel(snap),
        )
        return row
    compact = layout == "compact"
    row = Table.grid(expand=True, padding=(0, 1))
    row.add_column(ratio=1)
    row.add_column(ratio=1)
    row.add_row(
        traffic_panel(snap, spark_width=8 if compact else 10, compact=compact),
        health_panel(snap, compact=compact),
    )
    if compact:
        return row
    return Group(row, gossip_panel(snap, compact=True))


# --- events --------------------------------------------------------------------------------


def events_panel(snap: Snapshot, *, rows: int) -> Panel:
    recent = list(snap.events)[-rows:]
    body = Text(
        "\n".join(recent) if recent else "(no membership changes seen yet)",
        no_wrap=True,
        overflow="ellipsis",
    )
    return Panel(body, title="events", title_align="left", box=box.ROUNDED)


def membership_events(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], *, label: str
) -> list[str]:
    """Joins, status changes, removals and leader changes between two members documents.

    ``label`` prefixes each event (e.g. elapsed time); ``old=None`` yields no events, as the
    first document only sets the baseline.
    """
    if old is None:
        return []
    before = {str(m.get("name")): str(m.get("status")) for m in old.get("members", [])}
    after = {str(m.get("name")): str(m.get("status")) for m in new.get("members", [])}
    out: list[str] = []
    for name, status in after.items():
        if name not in before:
            out.append(f"{label} {name} joined ({status})")
        elif before[name] != status:
            out.append(f"{label} {name} {before[name]} -> {status}")
    out.extend(f"{label} {name} removed" for name in before if name not in after)
    if old.get("leader") != new.get("leader"):
        out.append(
            f"{label} leader {old.get('leader') or '(none)'} -> {new.get('leader') or '(none)'}"
        )
    return out
