"""fsync of the file and of its directory on COMPLETE, observed on the real FileSink.

Real files, real directories, real links and renames: only ``os.fsync`` is wrapped, by a
spy that calls the real one after noting what the fd is (``fstat``: a regular file and its
inode, or a directory) and what the target path holds at that moment. That is enough to
show the order the promise needs: the file is fsynced while the target does not hold it
yet (before the link or rename), the directory once it does (after).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.sink import FileSink
from gsi.testing import open_guest
from host_sim import copy_vm_file


@dataclass(frozen=True)
class Fsync:
    kind: str
    """"file", "directory" or "other"."""
    inode: int
    target_inode: int | None
    """The inode the target path held when the fsync was called (None: absent)."""


class Spy:
    def __init__(self, target: Path, fail: Callable[[str], OSError | None]) -> None:
        self.target = target
        self.fail = fail
        self.calls: list[Fsync] = []

    def fsync(self, fd: int, real: Callable[[int], None]) -> None:
        st = os.fstat(fd)
        kind = ("file" if stat.S_ISREG(st.st_mode) else
                "directory" if stat.S_ISDIR(st.st_mode) else "other")
        try:
            target_inode: int | None = self.target.lstat().st_ino
        except FileNotFoundError:
            target_inode = None
        self.calls.append(Fsync(kind, st.st_ino, target_inode))
        error = self.fail(kind)
        if error is not None:
            raise error
        real(fd)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch, root: Path) -> Iterator[Spy]:
    real = os.fsync
    spy = Spy(root / "d" / "f", lambda kind: None)
    monkeypatch.setattr(os, "fsync", lambda fd: spy.fsync(fd, real))
    yield spy


def _copy(root: Path, *, fsync: bool, overwrite: bool) -> None:
    sink = FileSink(root, fsync=fsync)
    try:
        copy = sink.begin("/d", "f", CopyFlags.CREATE_PATH
                          | (CopyFlags.OVER_WRITE if overwrite else CopyFlags(0)), 5)
        copy.write(0, b"hello")
        copy.commit()
    finally:
        sink.close()


@pytest.mark.parametrize("overwrite", [False, True], ids=["link", "rename"])
def test_commit_fsyncs_the_file_before_and_the_directory_after(
        spy: Spy, root: Path, overwrite: bool) -> None:
    old_inode = None
    if overwrite:
        (root / "d").mkdir()
        (root / "d" / "f").write_bytes(b"old")
        old_inode = (root / "d" / "f").stat().st_ino
    _copy(root, fsync=True, overwrite=overwrite)
    target = root / "d" / "f"
    assert target.read_bytes() == b"hello"
    new_inode = target.stat().st_ino
    file_sync, dir_sync = spy.calls
    # the committed file itself, fsynced while the target still held the old entry
    assert file_sync.kind == "file" and file_sync.inode == new_inode
    assert file_sync.target_inode == old_inode
    # the target's directory, fsynced once the target is the new file
    assert dir_sync.kind == "directory" and dir_sync.inode == (root / "d").stat().st_ino
    assert dir_sync.target_inode == new_inode


def test_no_fsync_when_off(spy: Spy, root: Path) -> None:
    _copy(root, fsync=False, overwrite=False)
    assert (root / "d" / "f").read_bytes() == b"hello"
    assert spy.calls == []


@pytest.mark.parametrize("failing", ["file", "directory"])
def test_fsync_failure(spy: Spy, root: Path, failing: str) -> None:
    """A failing file fsync commits nothing; a failing directory fsync leaves the target
    in place but maybe not durable: E_FAIL either way, and the reason says which."""
    spy.fail = lambda kind: OSError(errno.EIO, os.strerror(errno.EIO)) \
        if kind == failing else None
    with pytest.raises(SinkError) as info:
        _copy(root, fsync=True, overwrite=False)
    assert info.value.status == Status.E_FAIL and "EIO" in info.value.reason
    if failing == "directory":
        assert "is in place" in info.value.reason
        assert [c.kind for c in spy.calls] == ["file", "directory"]
        assert (root / "d" / "f").read_bytes() == b"hello"
        assert sorted(p.name for p in (root / "d").iterdir()) == ["f"]  # no temp left
    else:
        assert [c.kind for c in spy.calls] == ["file"]
        assert list((root / "d").iterdir()) == []


@pytest.mark.parametrize("fsync", [True, False])
async def test_receiver_fsyncs_on_complete(spy: Spy, root: Path, tmp_path: Path,
                                           fsync: bool) -> None:
    """The same through a running receiver (the session's worker thread calls it)."""
    source = tmp_path / "src"
    source.write_bytes(b"x" * 20000)
    async with open_guest(root, fsync=fsync) as guest:
        with trio.fail_after(20):
            await copy_vm_file(guest.url, source, "/d", name="f", create_full_path=True)
    assert (root / "d" / "f").read_bytes() == source.read_bytes()
    if fsync:
        assert [(c.kind, c.inode) for c in spy.calls] == [
            ("file", (root / "d" / "f").stat().st_ino),
            ("directory", (root / "d").stat().st_ino)]
    else:
        assert spy.calls == []
