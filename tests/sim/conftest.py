from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import outcome
import pytest
import trio
import trio.lowlevel

T = TypeVar("T")

SEEDS = [1, 2, 3]


@pytest.fixture(params=SEEDS, ids=[f"seed{s}" for s in SEEDS])
def seed(request: pytest.FixtureRequest) -> int:
    value: int = request.param
    return value


@pytest.fixture(autouse=True)
def clock_waits_for_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated time stands still while a worker thread runs.

    An autojump ``MockClock`` jumps to the next timer as soon as every task is blocked, and a task
    waiting on a worker thread (a real log engine's write, fsync or read) is blocked. However long
    the thread takes in real time, the simulated cluster would live through whole replica
    timeouts meanwhile, so an fsync on a slow CI disk would fail a write the test waits for. While
    a thread runs, a companion task keeps the run queue non-empty, so the clock cannot jump.

    Every simulated test gets it: the memory engine computes anti-entropy digests in a thread
    too, and how far the clock ran meanwhile depended on the machine's load, not on the seed.
    """
    real_run_sync = trio.to_thread.run_sync

    async def run_sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        running = True

        async def hold_the_clock() -> None:
            while running:
                await trio.lowlevel.cancel_shielded_checkpoint()

        # The thread's outcome leaves the nursery unraised, so its caller sees the exception
        # itself, not an ExceptionGroup around it.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold_the_clock)
            try:
                result = await outcome.acapture(real_run_sync, fn, *args, **kwargs)
            finally:
                running = False
        return result.unwrap()

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync)
