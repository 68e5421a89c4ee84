"""Disk full, for real: the destination root is a 1 MiB tmpfs mounted for the test.

The receiver must answer 0x80070070 at START when ``file_size`` exceeds the free space
(before any data, so the host sends none), or at the WRITE that hits ENOSPC when the disk
fills during the copy; either way the old target is intact and the temp file removed
(its space given back). Mounting needs root (CAP_SYS_ADMIN): elsewhere these tests skip.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import all_temps
from fault_helpers import content, mounted_tmpfs, sessions_gone, temp_files

from gsi.constants import CopyFlags, Status
from gsi.testing import Guest, open_guest
from host_sim import HostClient, faulty_copy, open_host

FS_SIZE = 1 << 20
KIB = 1024
OLD = b"old content that must survive a full disk\n" * 100


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A fresh 1 MiB tmpfs, unmounted afterwards."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    with mounted_tmpfs(mount_point, FS_SIZE) as mnt:
        yield mnt


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def _write_all(host: HostClient, data: bytes, frag: int = 6144) -> list[int]:
    """WRITE ``data`` stop-and-wait; the statuses, stopping at the first failure."""
    statuses = []
    for offset in range(0, len(data), frag):
        answer = await host.request(host.conn.write(offset, data[offset:offset + frag]))
        statuses.append(answer.status)
        if not answer.ok:
            break
    return statuses


async def test_file_larger_than_free_space_is_refused_at_start(small_fs: Path) -> None:
    (small_fs / "target").write_bytes(OLD)
    free_before = free_bytes(small_fs)
    data = random.Random(1).randbytes(2 * FS_SIZE)
    async with open_guest(small_fs) as guest:
        with trio.fail_after(10):
            report = await faulty_copy(guest.url, data, "/", name="target", force=True)
        assert report.status("start") == Status.DISK_FULL
        assert report.statuses("write") == []  # refused before any data
        assert report.outcome == "refused"
        await sessions_gone(guest)
        assert content(small_fs / "target") == OLD
        assert temp_files(small_fs) == []
    assert free_bytes(small_fs) == free_before


async def test_disk_filling_during_the_copy_fails_the_write(small_fs: Path) -> None:
    """Two copies of 600 KiB each pass START on an empty 1 MiB disk (the free-space check
    off: with it, the second START is refused, the first one's 600 KiB being declared);
    the first one commits, so the second hits ENOSPC while writing."""
    (small_fs / "second").write_bytes(OLD)
    first = random.Random(2).randbytes(600 * KIB)
    second = random.Random(3).randbytes(600 * KIB)
    async with open_guest(small_fs, check_free_space=False) as guest, \
            open_host(guest.url) as late:
        with trio.fail_after(20):
            await late.negotiate()
            start = await late.request(late.conn.start_copy(
                file_name="second", path_name="/", flags=CopyFlags.OVER_WRITE,
                file_size=len(second)))
            assert start.ok
            report = await faulty_copy(guest.url, first, "/", name="first")
            assert report.outcome == "committed"
            statuses = await _write_all(late, second)
            assert statuses[-1] == Status.DISK_FULL
            assert all(s == Status.S_OK for s in statuses[:-1])
            # The copy is over: later requests find no open copy.
            complete = await late.request(late.conn.complete())
            assert complete.status == Status.E_FAIL
            assert temp_files(small_fs) == []
        assert content(small_fs / "first") == first
        assert content(small_fs / "second") == OLD
    assert temp_files(small_fs) == []


async def test_no_free_space_check_fails_at_write_instead(small_fs: Path) -> None:
    (small_fs / "target").write_bytes(OLD)
    free_before = free_bytes(small_fs)
    data = random.Random(4).randbytes(2 * FS_SIZE)
    async with open_guest(small_fs, check_free_space=False) as guest:
        with trio.fail_after(20):
            report = await faulty_copy(guest.url, data, "/", name="target", force=True,
                                       window=8)
        assert report.status("start") == Status.S_OK
        assert Status.DISK_FULL in report.statuses("write")
        assert report.outcome == "refused"
        await sessions_gone(guest)
        assert content(small_fs / "target") == OLD
        assert temp_files(small_fs) == []
    assert free_bytes(small_fs) == free_before


async def test_preallocate_reserves_the_space_at_start(small_fs: Path) -> None:
    """With preallocation the first open copy holds its 600 KiB, so a second START of
    600 KiB is refused at once (without it, it passes: see the test above)."""
    async with open_guest(small_fs, preallocate=True) as guest:
        await _second_start_refused(guest, small_fs)


async def _second_start_refused(guest: Guest, root: Path) -> None:
    size = 600 * KIB
    async with open_host(guest.url) as one, open_host(guest.url) as two:
        with trio.fail_after(10):
            await one.negotiate()
            await two.negotiate()
            first = await one.request(one.conn.start_copy(
                file_name="a", path_name="/", flags=CopyFlags.NONE, file_size=size))
            assert first.ok
            assert free_bytes(root) < size  # the temp file holds the space already
            second = await two.request(two.conn.start_copy(
                file_name="b", path_name="/", flags=CopyFlags.NONE, file_size=size))
            assert second.status == Status.DISK_FULL
            assert all_temps(root) == 1
            cancel = await one.request(one.conn.cancel())
            assert cancel.ok
            assert temp_files(root) == []
            assert free_bytes(root) >= size
    assert not (root / "a").exists() and not (root / "b").exists()
