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
      r, w: the default read and write quorums clients use.
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
        yield frame(self.snapshot, width=options.max_width, height=self.height or 1_000_000)


def frame(snap: Snapshot, *, width: int, height: int) -> Group:
    """The panels of one frame laid out for ``width`` x ``height`` cells."""
    wide = width >= WIDE
    events_rows = 5 if height >= 30 else 3
    bottom = _bottom(snap, wide)
    # header 3-4, members panel borders + table head 4, bottom panels ~7-10, events rows + 2.
    fixed = (4 if snap.error else 3) + 4 + (7 if wide else 10) + events_rows + 2
    member_rows = max(3, height - fixed)
    return Group(
        header_panel(snap),
        members_panel(snap, wide=wide, max_rows=member_rows),
        bottom,
        events_panel(snap, rows=events_rows),
    )


# --- header --------------------------------------------------------------------------------


def _watched_stats(snap: Snapshot) -> Mapping[str, Any] | None:
    if snap.members is None:
        return None
    return snap.stats.get(str(snap.members.get("self")))


def header_panel(snap: Snapshot) -> Panel:
    doc = snap.members or {}
    mine = _watched_stats(snap)
    counts = Counter(str(m.get("status")) for m in doc.get("members", []))
    line = Text()
    line.append(f"{snap.cluster}", style="bold")
    line.append(f"  watching {doc.get('self', '?')} ({snap.watched})")
    line.append("  leader ")
    line.append(str(doc.get("leader") or "(none)"), style="bold")
    replicas = mine.get("replicas") if mine else None
    line.append(f"  N/R/W {replicas if replicas is not None else '?'}/{snap.r}/{snap.w}")
    line.append("  members ")
    line.append(
        " ".join(f"{s}:{counts[s]}" for s in STATUS_ORDER if counts[s]) or "none",
    )
    converged = mine.get("converged") if mine else None
    line.append("  converged ")
    if converged is None:
        line.append("?")
    else:
        line.append("yes" if converged else "no", style="green" if converged else "yellow")
    body: list[Text] = [line]
    if snap.error:
        body.append(Text(snap.error, style="bold red", no_wrap=True, overflow="ellipsis"))
    return Panel(Group(*body), title="gossipkv dashboard", title_align="left", box=box.ROUNDED)


# --- members -------------------------------------------------------------------------------


def members_panel(snap: Snapshot, *, wide: bool, max_rows: int) -> Panel:
    doc = snap.members or {}
    leader = doc.get("leader")
    rows: list[Mapping[str, Any]] = list(doc.get("members", []))
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, expand=False, show_edge=False)
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


def traffic_panel(snap: Snapshot, *, spark_width: int) -> Panel:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(justify="right", no_wrap=True)
    for label in OPERATIONS.values():
        series = snap.history.get(label, ())
        now = f"{series[-1]:.1f}/s" if series else "-"
        grid.add_row(label, Text(sparkline(series, spark_width), style="cyan"), now)
    total = sum(snap.ops_per_s.values()) if snap.ops_per_s else None
    grid.add_row("all", "", "-" if total is None else f"{total:.1f}/s")
    return Panel(grid, title="traffic (ops/s)", title_align="left", box=box.ROUNDED)


def _sum(stats: Iterable[Mapping[str, Any]], key: str) -> int:
    return sum(int(s.get(key) or 0) for s in stats)


def health_panel(snap: Snapshot) -> Panel:
    stats = list(snap.stats.values())
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


def _dropped(stats: Iterable[Mapping[str, Any]], field: str = "dropped_frames") -> Counter[str]:
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


def gossip_panel(snap: Snapshot, *, compact: bool = False) -> Panel:
    stats = list(snap.stats.values())
    rounds = "-" if snap.gossip_rounds_per_s is None else f"{snap.gossip_rounds_per_s:.1f}/s"
    rate = "-" if snap.gossip_bytes_per_s is None else _fmt_bytes(snap.gossip_bytes_per_s)
    dropped = _dropped(stats)
    dropped_text = ", ".join(f"{k}:{v}" for k, v in dropped.most_common(3)) if dropped else "none"
    # What members refused to protect themselves (connection caps, timeouts, watch caps).
    refused = _dropped(stats, "refusals")
    refused_text = ", ".join(f"{k}:{v}" for k, v in refused.most_common(3)) if refused else "none"
    lag_member = max(stats, key=lambda s: float(s.get("max_loop_lag") or 0.0), default=None)
    lag = (
        f"{float(lag_member.get('max_loop_lag') or 0.0) * 1000:.1f} ms ({lag_member.get('name')})"
        if lag_member
        else "-"
    )
    if compact:
        body: Table | Text = Text(
            f"rounds {rounds}  bytes {rate}  dropped {dropped_text}  max loop lag {lag}"
        )
    else:
        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        grid.add_row("rounds", rounds)
        grid.add_row("bytes in+out", rate)
        grid.add_row("dropped", dropped_text)
        grid.add_row("refused", refused_text)
        grid.add_row("max loop lag", lag)
        body = grid
    return Panel(body, title="gossip", title_align="left", box=box.ROUNDED)


def _bottom(snap: Snapshot, wide: bool) -> Table | Group:
    if wide:
        row = Table.grid(expand=True, padding=(0, 1))
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_column(ratio=1)
        row.add_row(traffic_panel(snap, spark_width=24), health_panel(snap), gossip_panel(snap))
        return row
    row = Table.grid(expand=True, padding=(0, 1))
    row.add_column(ratio=1)
    row.add_column(ratio=1)
    row.add_row(traffic_panel(snap, spark_width=16), health_panel(snap))
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
