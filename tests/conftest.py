"""Test tiers: the tests that start real peer processes are marked ``serial``.

They run in their own pytest session, alone on the machine (each starts several peer processes,
which need every core), after the rest has run on every core (pytest-xdist: three workers keep
two cores busy while the TCP and TLS tests wait on sockets). The README's test command does both::

    python -m pytest -q -n 3 --dist worksteal -m "not serial" && python -m pytest -q -m serial

A plain ``python -m pytest`` still runs everything, one test at a time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).parent
#: Folders (relative to tests/) whose tests start real peer processes. Tests that start one
#: process that does not gossip (the crash tests, CLI startup, the examples, packaging) need no
#: core to themselves and run with the rest.
SERIAL = (
    "proc/",
    "abuse/",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        where = item.path.relative_to(_HERE).as_posix()
        if where.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
