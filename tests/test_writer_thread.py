"""The connection's writer thread (gsi.writer.WriterThread): results and exceptions come
back to the waiting task, a cancelled waiter still waits for the job it handed over, and
a stopped writer leaves no thread and no file descriptor behind.

Real threads and a real trio loop; nothing is mocked.
"""

from __future__ import annotations

import os
import threading

import pytest
import trio

from gsi.writer import WriterThread


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "gsi-writer"]


def _join_writers() -> None:
    for thread in _writer_threads():
        thread.join(10)
        assert not thread.is_alive()


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _record_thread(seen: list[str], value: int) -> int:
    seen.append(threading.current_thread().name)
    return value


async def test_results_and_exceptions_come_back_in_order() -> None:
    writer = WriterThread()
    seen: list[str] = []
    try:
        with trio.fail_after(10):
            for i in range(50):
                assert await writer.run(_record_thread, seen, i) == i
            with pytest.raises(ZeroDivisionError):
                await writer.run(lambda: 1 // 0)
            assert await writer.run(str.upper, "after the error") == "AFTER THE ERROR"
    finally:
        writer.stop()
    assert seen == ["gsi-writer"] * 50


async def test_a_cancelled_waiter_waits_for_its_job() -> None:
    """The job may use the receive buffer until it returns: cancellation takes effect
    only after it has."""
    writer = WriterThread()
    entered, gate = threading.Event(), threading.Event()
    finished: list[bool] = []

    def job() -> str:
        entered.set()
        gate.wait(10)
        finished.append(gate.is_set())
        return "done"

    scope = trio.CancelScope()

    async def cancel_when_entered() -> None:
        await trio.to_thread.run_sync(entered.wait, 10)
        scope.cancel()  # while the job runs: an unshielded waiter would leave now
        gate.set()

    try:
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(cancel_when_entered)
                with scope:
                    result = await writer.run(job)
                    await trio.sleep_forever()  # cancelled here, after the job returned
            assert scope.cancelled_caught
        assert result == "done"
        assert finished == [True]
    finally:
        writer.stop()


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
async def test_stopped_writers_leave_no_thread_and_no_descriptor() -> None:
    _join_writers()
    before = _open_fds()
    with trio.fail_after(20):
        for _ in range(20):
            writer = WriterThread()
            await writer.run(int, "7")
            assert len(_writer_threads()) == 1
            during = _open_fds()
            assert len(during - before) >= 1  # the wake-up descriptor
            writer.stop()
            writer.stop()  # idempotent
            _join_writers()
    assert _open_fds() == before


def test_stop_before_any_job_starts_nothing() -> None:
    before = len(_writer_threads())
    writer = WriterThread()
    writer.stop()
    assert len(_writer_threads()) == before
