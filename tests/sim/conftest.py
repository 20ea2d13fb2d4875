from __future__ import annotations

import pytest

SEEDS = [1, 2, 3]


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def seed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value
