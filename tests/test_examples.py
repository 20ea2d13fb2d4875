"""Every example in examples/ runs by itself, exits 0 and prints what it demonstrates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example file -> a line its output must contain
EXPECTED = {
    "partition_test.py": "INVARIANT HOLDS",
    "embedded_node.py": "EMBEDDED NODE DONE",
    "service_registry.py": "REGISTRY SAW: +db1 +web1 +web2 -web1 -db1",
    "shopping_cart.py": "MERGED CART: ['book', 'lamp', 'mug', 'pen', 'socks']",
    "watch_keys.py": "WATCH SAW 4 CHANGES",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert EXPECTED[name] in result.stdout, result.stdout


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(EXPECTED)
