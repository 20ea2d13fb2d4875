from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ._peers import Peers


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[Peers]:
    p = Peers(tmp_path)
    try:
        yield p
    finally:
        p.kill_all()
