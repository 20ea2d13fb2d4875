"""Pure rendering of membership documents into rich tables (no I/O)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

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


def members_table(doc: dict[str, Any]) -> Table:
    """Render a ``members --json`` document (the leader is marked with ``*``)."""
    leader = doc.get("leader")
    table = Table(
        title=f"members seen by {doc.get('self')}", title_justify="left", box=box.SIMPLE_HEAD
    )
    members = doc.get("members", [])
    with_meta = any(m.get("metadata") for m in members)
    for col in ("name", "address", "status", "reach", "age", "generation", "hb", "phi"):
        table.add_column(col, no_wrap=True)
    if with_meta:
        table.add_column("metadata", no_wrap=True, overflow="ellipsis", max_width=40)
    for m in members:
        status = str(m.get("status"))
        phi = m.get("phi")
        meta = ", ".join(f"{k}={v}" for k, v in (m.get("metadata") or {}).items())
        table.add_row(
            f"{m.get('name')}{' *' if m.get('name') == leader else ''}",
            str(m.get("address") or "-"),
            Text(f"{STATUS_CODE.get(status, '?')} {status}", style=STATUS_STYLE.get(status, "")),
            "yes" if m.get("reachable") else "no",
            str(m.get("age_rank") or "-"),
            str(m.get("generation")),
            str(m.get("heartbeat")),
            "-" if phi is None else f"{phi:.2f}",
            *([meta] if with_meta else []),
        )
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
