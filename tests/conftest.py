"""Test tiers: the tests that start real processes are marked ``serial``.

They run in their own pytest session, alone on the machine (each starts several peer processes,
which need every core), after the in-process tiers have run beside each other on every core
(``-n 2``, pytest-xdist). The README's test command does both::

    python -m pytest -q -n 2 -m "not serial" && python -m pytest -q -m serial

A plain ``python -m pytest`` still runs everything, one test at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent
#: Files and folders (relative to tests/) whose tests start real processes.
SERIAL = (
    "proc/",
    "abuse/",
    "storage/test_crash.py",
    "storage/test_bench_cli.py",
    "test_cli_startup.py",
    "test_dashboard.py",
    "test_examples.py",
    "test_packaging.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(_HERE).as_posix()
        if where.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
