"""Test tiers: the tests that start real peer processes are marked ``serial``.

They run in their own pytest session, alone on the machine (each starts several peer processes,
which need every core), after the rest has run on every core (pytest-xdist: three workers keep
two cores busy while the TCP and TLS tests wait on sockets). The README's test command does both::

    python -m pytest -q -n 3 --dist worksteal -m "not serial" && python -m pytest -q -m serial

A plain ``python -m pytest`` still runs everything, one test at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
import trio.lowlevel
import trio.testing

T = TypeVar("T")

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


@pytest.fixture(autouse=True)
def clock_waits_for_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """An autojumping ``MockClock`` does not jump while a worker thread runs.

    It jumps to the next timer as soon as every task is blocked, and a task waiting on a worker
    thread (a real log engine's write, fsync or read) is blocked. However long the thread takes
    in real time, the simulated cluster would live through whole replica timeouts meanwhile, so
    an fsync on a slow CI disk would fail a write the test waits for. While any thread runs, the
    clock's autojump threshold is infinite: the loop sleeps until the thread hands its result
    back, and simulated time resumes from where it stood.

    Every test under a ``MockClock`` gets it: the memory engine computes anti-entropy digests in
    a thread too, and how far the clock ran meanwhile depended on the machine's load, not on the
    seed. Under the real clock the thread runs as it would in production. (A side effect:
    ``trio.testing.wait_all_tasks_blocked`` now also waits for the threads in flight.)
    """
    real_run_sync = trio.to_thread.run_sync
    in_flight = 0
    threshold = 0.0

    async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        nonlocal in_flight, threshold
        clock = trio.lowlevel.current_clock()
        if not isinstance(clock, trio.testing.MockClock):
            return await real_run_sync(fn, *args, **kwargs)
        if in_flight == 0:
            threshold = clock.autojump_threshold
            clock.autojump_threshold = math.inf
        in_flight += 1
        try:
            return await real_run_sync(fn, *args, **kwargs)
        finally:
            in_flight -= 1
            if in_flight == 0:
                clock.autojump_threshold = threshold

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
