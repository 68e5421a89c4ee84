"""FileSink against a local adversary: temp files swapped by name, directories moved out of
the root, symlinks flipping while they are resolved, names too long for the filesystem,
space promised twice. Real files, real threads and subprocesses, real tmpfs mounts."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest
from fault_helpers import mounted_tmpfs

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.sink import FileSink
from gsi.sweep import LOCK_NAME_RE
from gsi.temps import TEMP_NAME_RE

NONE = CopyFlags.NONE
OW = CopyFlags.OVER_WRITE
CP = CopyFlags.CREATE_PATH
MIB = 1 << 20


def tmpfs(where: Path, size: str) -> contextlib.AbstractContextManager[Path]:
    where.mkdir()
    return mounted_tmpfs(where, size)


def names(directory: Path) -> list[str]:
    """Entries of ``directory``, the instance lock file of a live sink aside."""
    return sorted(n for n in os.listdir(directory) if not LOCK_NAME_RE.fullmatch(n))


# --- temp files ----------------------------------------------------------------------------


def test_unnamed_temps_on_tmpfs(tmp_path: Path) -> None:
    """tmpfs has O_TMPFILE: a copy in progress has no name; both commits work."""
    with tmpfs(tmp_path / "mnt", "8m") as mnt, FileSink(mnt) as sink:
        (mnt / "old").write_bytes(b"old")
        for name, flags in (("new", NONE), ("old", OW)):
            oc = sink.begin("", name, flags, 3)
            assert oc.temp_name == ""
            assert names(mnt) == (["old"] if name == "new" else ["new", "old"])
            oc.write(0, b"abc")
            oc.commit()
        assert (mnt / "new").read_bytes() == b"abc" == (mnt / "old").read_bytes()
        assert names(mnt) == ["new", "old"]


@pytest.mark.parametrize("flags", [NONE, OW], ids=["new", "force"])
def test_named_temp_replaced_by_name_is_never_committed(
        root: Path, flags: CopyFlags, caplog: pytest.LogCaptureFixture) -> None:
    """A local user renames their own file over the .part before COMPLETE: refused,
    nothing committed, their file is not removed either."""
    (root / "f").write_bytes(b"old") if flags & OW else None
    with FileSink(root, temp_files="named") as sink:
        oc = sink.begin("", "f", flags, 3)
        oc.write(0, b"new")
        impostor = root / "impostor"
        impostor.write_bytes(b"bad")
        os.rename(impostor, root / oc.temp_name)
        part = oc.temp_name
        with pytest.raises(SinkError) as info:
            oc.commit()
    assert info.value.status == Status.ACCESS_DENIED
    assert "replaced by someone else" in info.value.reason
    assert (root / part).read_bytes() == b"bad"  # not ours: left alone
    if flags & OW:
        assert (root / "f").read_bytes() == b"old"
    else:
        assert not (root / "f").exists()


@pytest.mark.parametrize("temp_files", ["auto", "named"])
def test_adversary_renaming_over_every_temp_name_never_gets_committed(
        root: Path, temp_files: str) -> None:
    """A thread renames an impostor over every temp-looking name it sees, as fast as it
    can, while copies with OVER_WRITE commit: each target ends as our data or its old
    content, never the impostor's."""
    stop = threading.Event()

    def adversary() -> None:
        n = 0
        while not stop.is_set():
            for name in os.listdir(root):
                if TEMP_NAME_RE.fullmatch(name):
                    n += 1
                    bad = root / f"bad{n}"
                    bad.write_bytes(b"impostor")
                    with contextlib.suppress(OSError):
                        os.rename(bad, root / name)
                    with contextlib.suppress(OSError):
                        bad.unlink()

    thread = threading.Thread(target=adversary)
    outcomes = {"ok": 0, "refused": 0}
    with FileSink(root, temp_files=temp_files, fsync=False) as sink:
        thread.start()
        try:
            for i in range(200):
                (root / "t").write_bytes(b"old content")
                oc = sink.begin("", "t", OW, 8)
                oc.write(0, f"ours{i:04d}".encode())
                try:
                    oc.commit()
                except SinkError as exc:
                    assert exc.status in (Status.ACCESS_DENIED, Status.E_FAIL), exc
                    assert (root / "t").read_bytes() == b"old content"
                    outcomes["refused"] += 1
                else:
                    assert (root / "t").read_bytes() == f"ours{i:04d}".encode()
                    outcomes["ok"] += 1
        finally:
            stop.set()
            thread.join()
    assert outcomes["ok"] + outcomes["refused"] == 200


# --- the commit stays inside the root ---------------------------------------------------------


@pytest.mark.parametrize("temp_files", ["auto", "named"])
@pytest.mark.parametrize("how", ["moved", "replaced by a symlink"])
def test_directory_moved_out_of_the_root_before_commit(
        root: Path, tmp_path: Path, temp_files: str, how: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "a" / "b").mkdir(parents=True)
    with FileSink(root, temp_files=temp_files) as sink:
        for flags in (NONE, OW):
            oc = sink.begin("a/b", "f", flags, 3)
            oc.write(0, b"new")
            os.rename(root / "a" / "b", outside / "b")
            if how != "moved":
                (root / "a" / "b").symlink_to(outside / "b")
            with pytest.raises(SinkError) as info:
                oc.commit()
            assert info.value.status == Status.ACCESS_DENIED
            assert "nothing committed" in info.value.reason
            assert os.listdir(outside / "b") == []  # nothing landed outside, no temp either
            if how != "moved":
                (root / "a" / "b").unlink()
            os.rename(outside / "b", root / "a" / "b")
        # Back in place: the same path commits again.
        oc = sink.begin("a/b", "f", NONE, 3)
        oc.write(0, b"new")
        oc.commit()
    assert (root / "a" / "b" / "f").read_bytes() == b"new"


# --- every failure is a status ----------------------------------------------------------------


def test_symlinks_flipping_while_start_resolves_them(root: Path) -> None:
    """A thread removes and recreates the links of a chain while begin() resolves it:
    every begin() gives an OpenCopy or a SinkError, never another exception."""
    (root / "real").mkdir()
    chain = [root / f"l{i}" for i in range(12)]
    for i, link in enumerate(chain):
        link.symlink_to(chain[i + 1].name if i + 1 < len(chain) else "real")
    stop = threading.Event()

    def adversary() -> None:
        while not stop.is_set():
            for i, link in enumerate(chain[1:], 1):
                with contextlib.suppress(OSError):
                    link.unlink()
                with contextlib.suppress(OSError):
                    link.symlink_to(chain[i + 1].name if i + 1 < len(chain) else "real")

    statuses: dict[str, int] = {}
    thread = threading.Thread(target=adversary)
    with FileSink(root, fsync=False) as sink:
        thread.start()
        try:
            for _ in range(3000):
                try:
                    sink.begin("l0", "f", NONE, 0).abort()
                    key = "ok"
                except SinkError as exc:
                    key = exc.status.name
                statuses[key] = statuses.get(key, 0) + 1
        finally:
            stop.set()
            thread.join()
    assert set(statuses) <= {"ok", "PATH_NOT_FOUND", "E_FAIL"}, statuses
    assert os.listdir(root / "real") == []


@pytest.mark.parametrize("size", [1 << 63, (1 << 64) - 1])
@pytest.mark.parametrize("check", [True, False])
def test_file_size_beyond_the_largest_offset(root: Path, size: int, check: bool) -> None:
    """With --preallocate and the check off, posix_fallocate used to raise OverflowError."""
    with FileSink(root, preallocate=True, check_free_space=check) as sink, \
            pytest.raises(SinkError) as info:
        sink.begin("new", "f", CP, size)
    assert info.value.status == Status.INVALIDARG
    assert os.listdir(root) == []


# --- names are checked before anything is created ---------------------------------------------


def test_too_long_names_create_no_directory(root: Path) -> None:
    long_name = "n" * 256  # NAME_MAX is 255 bytes here
    wide = "é" * 128  # 128 characters, 256 bytes in UTF-8
    with FileSink(root) as sink:
        for i in range(20):
            for path, name in ((f"d{i}/a/b/c", long_name), (f"d{i}/a/{wide}/c", "f"),
                               (f"d{i}/{long_name}", "f"), (f"d{i}/x", wide)):
                with pytest.raises(SinkError) as info:
                    sink.begin(path, name, CP, 10)
                assert info.value.status == Status.INVALIDARG
                assert "bytes in UTF-8" in info.value.reason
        assert os.listdir(root) == []
        sink.begin("d/" + "n" * 255, "é" * 127, CP, 0).commit()  # the limits themselves
    assert (root / "d" / ("n" * 255) / ("é" * 127)).exists()


@pytest.mark.parametrize("path,name", [("a/\udcff", "f"), ("a", "f\ud800"), ("\udc80", "x")])
def test_unencodable_names_create_no_directory(root: Path, path: str, name: str) -> None:
    with FileSink(root) as sink, pytest.raises(SinkError) as info:
        sink.begin(path, name, CP, 1)
    assert info.value.status == Status.INVALIDARG
    assert "UTF-8" in info.value.reason
    assert os.listdir(root) == []


@pytest.mark.parametrize("name", [".gsi-0123456789abcdef-0123456789abcdef.part",
                                  ".gsi-instance-0123456789abcdef.lock"])
def test_names_reserved_for_temp_and_lock_files(root: Path, name: str) -> None:
    with FileSink(root) as sink, pytest.raises(SinkError) as info:
        sink.begin("", name, NONE, 1)
    assert info.value.status == Status.ACCESS_DENIED
    assert os.listdir(root) == []


# --- space promised once -----------------------------------------------------------------------


def test_free_space_counts_what_open_copies_declared(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "64m") as mnt, FileSink(mnt) as sink:
        first = sink.begin("", "a", NONE, 40 * MIB)
        assert sink.declared_space() == 40 * MIB
        with pytest.raises(SinkError) as info:
            sink.begin("new/dir", "b", CP, 40 * MIB)
        assert info.value.status == Status.DISK_FULL
        assert "declared by other open copies" in info.value.reason
        assert names(mnt) == []  # refused before creating the directories
        small = sink.begin("", "c", NONE, 20 * MIB)  # what is left still fits
        first.abort()
        second = sink.begin("", "b", NONE, 40 * MIB)  # released by the abort
        small.write(0, b"x" * (20 * MIB))
        small.commit()  # released by the commit (the file's blocks now count instead)
        assert sink.declared_space() == 40 * MIB
        second.abort()
        assert sink.declared_space() == 0


def test_concurrent_starts_are_not_promised_the_same_space(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "mnt", "64m") as mnt, FileSink(mnt) as sink:
        results: list[object] = []
        barrier = threading.Barrier(8)

        def start(i: int) -> None:
            barrier.wait()
            try:
                results.append(sink.begin("", f"f{i}", NONE, 20 * MIB))
            except SinkError as exc:
                results.append(exc.status)

        threads = [threading.Thread(target=start, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        opened = [r for r in results if not isinstance(r, Status)]
        assert len(opened) == 3  # 64 MiB holds three 20 MiB files, not eight
        assert results.count(Status.DISK_FULL) == 5
        for oc in opened:
            oc.abort()  # type: ignore[attr-defined]


def test_preallocate_counts_and_implies_the_check(tmp_path: Path) -> None:
    """One START may not take the space another was promised: --preallocate checks the
    free space less what is declared even with the check off."""
    with tmpfs(tmp_path / "mnt", "64m") as mnt, \
            FileSink(mnt, check_free_space=False) as plain, \
            FileSink(mnt, preallocate=True, check_free_space=False) as sink:
        big = sink.begin("", "a", NONE, 40 * MIB)
        assert sink.declared_space() == 0  # allocated: the filesystem counts it now
        assert os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize < 25 * MIB
        with pytest.raises(SinkError) as info:
            sink.begin("", "b", NONE, 40 * MIB)
        assert info.value.status == Status.DISK_FULL
        plain.begin("", "c", NONE, 40 * MIB).abort()  # the check is off there
        big.abort()
        sink.begin("", "b", NONE, 40 * MIB).abort()
