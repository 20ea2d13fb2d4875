"""The TCP accept loop rides out descriptor exhaustion: no traceback storm, no stop."""

from __future__ import annotations

import errno
import logging

import pytest
import trio
import trio.testing

from gossipkv.transport._tcp import accept_loop


class FlakyListener:
    """Fails ``failures`` accepts with ``error`` (one each time it is asked), then hands out
    streams it makes up (plain objects: the handler only counts them)."""

    def __init__(self, failures: int, error: int) -> None:
        self.failures = failures
        self.error = error
        self.accepted = 0

    async def accept(self) -> trio.SocketStream:
        await trio.lowlevel.checkpoint()
        if self.failures:
            self.failures -= 1
            raise OSError(self.error, "simulated")
        self.accepted += 1
        if self.accepted > 3:
            await trio.sleep_forever()
        return object()  # type: ignore[return-value]


@pytest.mark.parametrize("error", [errno.EMFILE, errno.ENFILE])
async def test_running_out_of_descriptors_logs_once_a_minute_and_keeps_accepting(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, error: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="gossipkv.transport")
    listener = FlakyListener(failures=1000, error=error)
    handled: list[object] = []
    three = trio.Event()

    async def handler(stream: object) -> None:
        handled.append(stream)
        if len(handled) == 3:
            three.set()

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop, listener, handler, nursery)
        with trio.fail_after(3600):
            await three.wait()
        elapsed = trio.current_time() - started
        nursery.cancel_scope.cancel()
    # 1000 failures, backing off up to 1 s: about 1000 s of simulated time, so about 17 lines.
    records = [r for r in caplog.records if r.name == "gossipkv.transport"]
    assert len(records) <= elapsed / 60 + 1
    assert all(r.exc_info is None and r.levelno == logging.WARNING for r in records)
    assert "1 times" in records[0].getMessage()
    assert len(handled) == 3


async def test_other_accept_errors_propagate(autojump_clock: trio.testing.MockClock) -> None:
    listener = FlakyListener(failures=1, error=errno.EBADF)

    async def handler(stream: object) -> None:
        pass

    with pytest.RaisesGroup(OSError):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept_loop, listener, handler, nursery)
