"""gsi.paths: guest path splitting, name checks and the fd-relative directory walk."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.paths import (
    check_file_name,
    check_target,
    describe_oserror,
    guest_path,
    oserror_status,
    sink_error_from,
    split_path_name,
    walk_directory,
)


def open_directory(*args: Any, **kwargs: Any) -> int:
    """:func:`walk_directory`'s fd alone."""
    fd: int = walk_directory(*args, **kwargs)[0]
    return fd


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def same_dir(fd: int, path: Path) -> bool:
    a, b = os.fstat(fd), path.stat()
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def walk(root_fd: int, root: Path, path: str, *, create: bool = False) -> int:
    return open_directory(root_fd, os.path.realpath(root), split_path_name(path), create=create)


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("", []),
        ("/", []),
        (".", []),
        ("a", ["a"]),
        ("/a/b/", ["a", "b"]),
        ("a//./b/.", ["a", "b"]),
        ("...", ["..."]),
        ("a\\..\\b", ["a\\..\\b"]),  # a backslash is an ordinary character here
        (" x ", [" x "]),
    ],
)
def test_split_path_name(path: str, parts: list[str]) -> None:
    assert split_path_name(path) == parts


@pytest.mark.parametrize("path", ["..", "/..", "a/..", "../a", "a/../b", "a/./../"])
def test_split_path_name_refuses_dotdot(path: str) -> None:
    with pytest.raises(SinkError) as info:
        split_path_name(path)
    assert info.value.status == Status.ACCESS_DENIED


def test_split_path_name_refuses_nul() -> None:
    with pytest.raises(SinkError) as info:
        split_path_name("a\x00")
    assert info.value.status == Status.INVALIDARG


@pytest.mark.parametrize("name", ["f", "...", ".hidden", "Grüße 😀.txt", "a\\b"])
def test_check_file_name_accepts(name: str) -> None:
    check_file_name(name)


@pytest.mark.parametrize(
    ("name", "status"),
    [
        (".", Status.ACCESS_DENIED),
        ("..", Status.ACCESS_DENIED),
        ("", Status.INVALIDARG),
        ("/", Status.INVALIDARG),
        ("a/b", Status.INVALIDARG),
        ("\x00", Status.INVALIDARG),
    ],
)
def test_check_file_name_refuses(name: str, status: Status) -> None:
    with pytest.raises(SinkError) as info:
        check_file_name(name)
    assert info.value.status == status


def test_guest_path() -> None:
    assert guest_path([]) == "/"
    assert guest_path([], "f") == "/f"
    assert guest_path(["a", "b"], "f") == "/a/b/f"


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (errno.EACCES, Status.ACCESS_DENIED),
        (errno.EPERM, Status.ACCESS_DENIED),
        (errno.EROFS, Status.ACCESS_DENIED),
        (errno.ENOSPC, Status.DISK_FULL),
        (errno.EDQUOT, Status.DISK_FULL),
        (errno.ENAMETOOLONG, Status.INVALIDARG),
        (errno.EIO, Status.E_FAIL),
    ],
)
def test_oserror_status(err: int, status: Status) -> None:
    exc = OSError(err, os.strerror(err))
    assert oserror_status(exc) == status
    made = sink_error_from(exc, "doing X")
    assert made.status == status
    assert made.reason.startswith("doing X failed: ")
    assert errno.errorcode[err] in made.reason


def test_describe_oserror() -> None:
    assert describe_oserror(OSError(errno.ENOSPC, "x")) == "ENOSPC (No space left on device)"
    assert describe_oserror(OSError("no errno")) == "no errno"


def test_open_directory_walks_and_returns_a_new_fd(root: Path, root_fd: int) -> None:
    (root / "a" / "b").mkdir(parents=True)
    fd = walk(root_fd, root, "/a/b")
    try:
        assert fd != root_fd
        assert same_dir(fd, root / "a" / "b")
    finally:
        os.close(fd)
    fd = walk(root_fd, root, "")
    try:
        assert fd != root_fd and same_dir(fd, root)
    finally:
        os.close(fd)
    os.fstat(root_fd)  # the root fd is still open


def test_open_directory_creates_and_announces_first(root: Path, root_fd: int) -> None:
    calls: list[int] = []

    def before(fd: int) -> None:
        assert os.listdir(root) == []  # nothing created yet
        assert same_dir(fd, root)
        calls.append(fd)

    fd = open_directory(
        root_fd, str(root), ["x", "y", "z"], create=True, dir_mode=0o700, before_mkdir=before
    )
    os.close(fd)
    assert len(calls) == 1
    assert (root / "x" / "y" / "z").is_dir()


def test_before_mkdir_can_refuse(root: Path, root_fd: int) -> None:
    def refuse(fd: int) -> None:
        raise SinkError(Status.DISK_FULL, "no room")

    with pytest.raises(SinkError):
        open_directory(root_fd, str(root), ["x", "y"], create=True, before_mkdir=refuse)
    assert os.listdir(root) == []
    (root / "x").mkdir()
    fd = open_directory(root_fd, str(root), ["x"], create=True, before_mkdir=refuse)
    os.close(fd)  # nothing to create: not asked


def test_many_components_are_created(root: Path, root_fd: int) -> None:
    parts = [f"d{i}" for i in range(50)]
    fd = open_directory(root_fd, str(root), parts, create=True)
    os.close(fd)
    assert root.joinpath(*parts).is_dir()


def test_open_directory_fds_do_not_leak(root: Path, root_fd: int, tmp_path: Path) -> None:
    (root / "esc").symlink_to(tmp_path)
    (root / "loop").symlink_to("loop")
    before = len(os.listdir("/proc/self/fd"))
    for path in ["esc/x", "loop", "missing/x", "a/../b"]:
        with pytest.raises(SinkError):
            walk(root_fd, root, path)
    assert len(os.listdir("/proc/self/fd")) == before


def test_root_reached_through_a_symlinked_root(tmp_path: Path) -> None:
    real = tmp_path / "real"
    (real / "d").mkdir(parents=True)
    (real / "d" / "up").symlink_to(real)  # absolute, through the real path
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    fd_root = os.open(alias, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_directory(fd_root, os.path.realpath(alias), ["d", "up", "d"], create=False)
        assert same_dir(fd, real / "d")
        os.close(fd)
    finally:
        os.close(fd_root)


@pytest.mark.parametrize(
    ("entry", "flags", "status"),
    [
        ("none", CopyFlags.NONE, None),
        ("none", CopyFlags.OVER_WRITE, None),
        ("file", CopyFlags.NONE, Status.ALREADY_EXISTS),
        ("file", CopyFlags.OVER_WRITE, None),
        ("dir", CopyFlags.NONE, Status.ALREADY_EXISTS),
        ("dir", CopyFlags.OVER_WRITE, Status.ACCESS_DENIED),
        ("dangling", CopyFlags.NONE, Status.ALREADY_EXISTS),
        ("dangling", CopyFlags.OVER_WRITE, None),
        ("dirlink", CopyFlags.NONE, Status.ALREADY_EXISTS),
        ("dirlink", CopyFlags.OVER_WRITE, None),  # the link is replaced, not the directory
    ],
)
def test_check_target(
    root: Path, root_fd: int, entry: str, flags: CopyFlags, status: Status | None
) -> None:
    t = root / "t"
    if entry == "file":
        t.write_bytes(b"")
    elif entry == "dir":
        t.mkdir()
    elif entry == "dangling":
        t.symlink_to("nowhere")
    elif entry == "dirlink":
        (root / "d").mkdir()
        t.symlink_to("d")
    if status is None:
        check_target(root_fd, "t", flags, "/t")
    else:
        with pytest.raises(SinkError) as info:
            check_target(root_fd, "t", flags, "/t")
        assert info.value.status == status
        assert "/t" in info.value.reason
