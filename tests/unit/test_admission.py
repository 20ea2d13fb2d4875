"""The byte budget that admits data-path work (issue 10): bounded, fair, never stuck."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from gossipkv._admission import ByteBudget


async def test_work_waits_for_room_in_order() -> None:
    budget = ByteBudget(100)
    assert budget.try_acquire(60) and not budget.try_acquire(60)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 50)
        await trio.testing.wait_all_tasks_blocked()
        # A waiter is queued: later work may not jump ahead of it, even if it would fit.
        assert not budget.try_acquire(10)
        budget.release(60)
    assert order == ["a"] and budget.used == 50 and budget.waits == 1


async def test_one_operation_larger_than_the_budget_runs_alone() -> None:
    budget = ByteBudget(100)
    assert budget.try_acquire(1_000)  # nothing else reserved: admitted, never refused
    with trio.move_on_after(0.05):
        await budget.acquire(1)
        pytest.fail("admitted beside a reservation over the whole budget")
    budget.release(1_000)
    await budget.acquire(1)
    assert budget.used == 1


async def test_a_cancelled_waiter_reserves_nothing() -> None:
    budget = ByteBudget(10)
    budget.try_acquire(10)
    with trio.move_on_after(0.01):
        await budget.acquire(5)
    budget.release(10)
    assert budget.used == 0 and budget.try_acquire(10)
