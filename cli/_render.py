"""Pure rendering of membership documents into rich tables (no I/O)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from gossipkv import MemberView

STATUS_STYLE = {
    "up": "green",
    "joining": "cyan",
    "leaving": "yellow",
    "left": "bright_black",
    "down": "red",
    "removed": "bright_black",
}
# Cassandra-style compact codes: reachability then state.
STATUS_CODE = {
    "up": "UN",
    "joining": "UJ",
    "leaving": "UL",
    "left": "L",
    "down": "DN",
    "removed": "R",
}


def members_doc(rows: Sequence[MemberView]) -> dict[str, Any]:
    """The ``members --json`` document of a membership table (``Client.members()``).

    Returns:
      ``{"self", "leader", "members": [{"name", "address", "status", "reachable", "up_number",
      "age_rank", "generation", "heartbeat", "phi", "metadata"}, ...]}`` (stable; documented in
      the README): ``self`` and ``leader`` are the rows marked ``is_self`` and ``is_leader``.
    """
    return {
        "self": next((r.name for r in rows if r.is_self), None),
        "leader": next((r.name for r in rows if r.is_leader), None),
        "members": [
            {
                "name": r.name,
                "address": r.address,
                "status": r.status,
                "reachable": r.reachable,
                "up_number": r.up_number,
                "age_rank": r.age_rank,
                "generation": r.generation,
                "heartbeat": r.heartbeat,
                "phi": r.phi,
                "metadata": r.metadata,
            }
            for r in rows
        ],
    }


#: Columns left out, in this order, when the table is wider than the screen: names, addresses
#: and statuses are never cut.
OPTIONAL_COLUMNS = ("metadata", "generation", "hb", "phi", "age")


def members_table(doc: dict[str, Any], width: int | None = None) -> Table:
    """Render a ``members --json`` document (the leader is marked with ``*``).

    With ``width``, columns of :data:`OPTIONAL_COLUMNS` are left out until the table fits, so
    an 80-column terminal shows every name and address whole."""
    from rich.console import Console

    drop: set[str] = set()
    table = _members_table(doc, drop)
    if width is None:
        return table
    measure = Console(width=4096)
    for column in OPTIONAL_COLUMNS:
        if measure.measure(table).maximum <= width:
            break
        drop.add(column)
        table = _members_table(doc, drop)
    return table


def _members_table(doc: dict[str, Any], drop: set[str]) -> Table:
    leader = doc.get("leader")
    table = Table(
        title=f"members seen by {doc.get('self')}", title_justify="left", box=box.SIMPLE_HEAD
    )
    members = doc.get("members", [])
    columns = ["name", "address", "status", "reach", "age", "generation", "hb", "phi"]
    if any(m.get("metadata") for m in members):
        columns.append("metadata")
    columns = [c for c in columns if c not in drop]
    for col in columns:
        if col == "metadata":
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=40)
        else:
            table.add_column(col, no_wrap=True)
    for m in members:
        status = str(m.get("status"))
        phi = m.get("phi")
        cells: dict[str, Any] = {
            "name": f"{m.get('name')}{' *' if m.get('name') == leader else ''}",
            "address": str(m.get("address") or "-"),
            "status": Text(
                f"{STATUS_CODE.get(status, '?')} {status}", style=STATUS_STYLE.get(status, "")
            ),
            "reach": "yes" if m.get("reachable") else "no",
            "age": str(m.get("age_rank") or "-"),
            "generation": str(m.get("generation")),
            "hb": str(m.get("heartbeat")),
            "phi": "-" if phi is None else f"{phi:.2f}",
            "metadata": ", ".join(f"{k}={v}" for k, v in (m.get("metadata") or {}).items()),
        }
        table.add_row(*(cells[c] for c in columns))
    table.caption = summary_line(doc)
    table.caption_justify = "left"
    return table


def summary_line(doc: dict[str, Any]) -> str:
    counts = Counter(str(m.get("status")) for m in doc.get("members", []))
    parts = [
        f"{k}:{counts[k]}"
        for k in ("up", "joining", "leaving", "left", "down", "removed")
        if counts[k]
    ]
    return f"leader: {doc.get('leader') or '(none)'}   * marks the leader   " + "  ".join(parts)
