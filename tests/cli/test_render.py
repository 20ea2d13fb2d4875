"""``members``/``status`` tables: whole when piped, narrowed by columns (never cut) on a screen."""

from __future__ import annotations

from typing import Any

from gossipkv_cli._render import members_table
from rich.console import Console


def doc(n: int) -> dict[str, Any]:
    return {
        "self": "n1",
        "leader": "n1",
        "members": [
            {
                "name": f"member-with-a-long-name-{i}",
                "address": f"127.0.0.1:{23000 + i}",
                "status": "up",
                "reachable": True,
                "age_rank": i,
                "generation": 1_795_000_000_000 + i,
                "heartbeat": 12345,
                "phi": 0.5,
                "metadata": {"role": "web", "zone": "eu-west-1a"},
            }
            for i in range(1, n + 1)
        ],
    }


def text(table: Any, width: int) -> str:
    console = Console(record=True, width=width, color_system=None)
    console.print(table)
    return console.export_text()


def test_80_columns_drop_columns_before_cutting_addresses() -> None:
    out = text(members_table(doc(5), 80), 80)
    assert all(len(line) <= 80 for line in out.splitlines())
    for i in range(1, 6):
        assert f"127.0.0.1:{23000 + i}" in out and f"member-with-a-long-name-{i}" in out
    assert "…" not in out and "generation" not in out


def test_unbounded_width_keeps_every_column() -> None:
    out = text(members_table(doc(3)), 4096)
    assert "generation" in out and "1795000000003" in out and "zone=eu-west-1a" in out
