"""MemorySink answers as FileSink does: each case runs on both, on the same story."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.fake_sink import MemorySink
from gsi.sink import FileSink
from gsi.sink_api import Sink

CP, OW = CopyFlags.CREATE_PATH, CopyFlags.OVER_WRITE


class World:
    """One sink plus a way to look at and change what it holds, by guest path."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.memory = MemorySink(fsync=False)
        self.sink: Sink = self.memory if kind == "memory" else FileSink(
            root, fsync=False, check_free_space=False)

    def put_file(self, path: str, data: bytes) -> None:
        if self.kind == "memory":
            self.memory.files[path] = data
        else:
            (self.root / path.lstrip("/")).write_bytes(data)

    def put_dir(self, path: str) -> None:
        if self.kind == "memory":
            self.memory.directories.add(path)
        else:
            (self.root / path.lstrip("/")).mkdir()

    def read(self, path: str) -> bytes | None:
        if self.kind == "memory":
            return self.memory.files.get(path)
        target = self.root / path.lstrip("/")
        return target.read_bytes() if target.is_file() else None


@pytest.fixture(params=["memory", "file"])
def world(request: pytest.FixtureRequest, root: Path) -> World:
    return World(request.param, root)


def status_of(call: Callable[[], object]) -> int:
    try:
        call()
    except SinkError as exc:
        return exc.status
    return Status.S_OK


def test_commit(world: World) -> None:
    copy = world.sink.begin("/a/b", "f", CP, 6)
    copy.write(3, b"def")
    copy.writev(0, [b"a", memoryview(b"bc")])
    assert copy.bytes_written == 6 and copy.target == "/a/b/f" and copy.file_size == 6
    copy.commit()
    assert world.read("/a/b/f") == b"abcdef"
    assert status_of(lambda: copy.write(0, b"x")) == Status.E_FAIL  # no longer open
    copy.abort()  # idempotent, harmless after a commit
    assert world.read("/a/b/f") == b"abcdef"


@pytest.mark.parametrize(("path", "name", "flags", "status"), [
    ("/missing", "f", CopyFlags(0), Status.PATH_NOT_FOUND),
    ("/x/../y", "f", CP, Status.ACCESS_DENIED),
    ("/", "", CP, Status.INVALIDARG),
    ("/", "..", CP, Status.ACCESS_DENIED),
    ("/", "old", CopyFlags(0), Status.ALREADY_EXISTS),
    ("/", "old", OW, Status.S_OK),
    ("/", "dir", CopyFlags(0), Status.ALREADY_EXISTS),
    ("/", "dir", OW, Status.ACCESS_DENIED),
    ("/old", "f", CP, Status.PATH_NOT_FOUND),
])
def test_begin_statuses(world: World, path: str, name: str, flags: CopyFlags,
                        status: int) -> None:
    world.put_file("/old", b"old")
    world.put_dir("/dir")
    assert status_of(lambda: world.sink.begin(path, name, flags, 1).abort()) == status
    assert world.read("/old") == b"old"


def test_target_appearing_during_the_copy(world: World) -> None:
    copy = world.sink.begin("/", "f", CopyFlags(0), 1)
    copy.write(0, b"n")
    world.put_file("/f", b"theirs")
    assert status_of(copy.commit) == Status.ALREADY_EXISTS
    assert world.read("/f") == b"theirs"


@pytest.mark.parametrize(("writes", "status"), [
    ([(0, b"ab")], Status.E_FAIL),          # short: nothing committed
    ([(2, b"abc")], Status.INVALIDARG),     # beyond file_size: refused at the write
    ([(-1, b"a")], Status.INVALIDARG),
])
def test_bad_data_is_never_committed(world: World, writes: list[tuple[int, bytes]],
                                     status: int) -> None:
    world.put_file("/t", b"old")
    copy = world.sink.begin("/", "t", OW, 4)

    def run() -> None:
        for offset, data in writes:
            copy.write(offset, data)
        copy.commit()

    assert status_of(run) == status
    assert world.read("/t") == b"old"
    assert status_of(copy.commit) == Status.E_FAIL  # the copy was aborted


def test_faults_and_fsync_records() -> None:
    sink = MemorySink(fail={"begin": SinkError(Status.DISK_FULL, "full")})
    assert status_of(lambda: sink.begin("/", "f", CP, 1)) == Status.DISK_FULL
    sink.fail = {"write": SinkError(Status.E_FAIL, "io")}
    copy = sink.begin("/", "f", CP, 1)
    assert status_of(lambda: copy.write(0, b"x")) == Status.E_FAIL
    assert copy.state == "aborted" and not sink.open_copies
    sink.fail = {}
    gate, reached = threading.Event(), threading.Event()
    sink.gates["commit"] = gate
    sink.on_call = lambda operation: reached.set() if operation == "commit" else None
    copy = sink.begin("/d", "f", CP, 1)
    copy.write(0, b"x")
    worker = threading.Thread(target=copy.commit)
    worker.start()
    assert reached.wait(10)
    assert worker.is_alive() and sink.files == {}  # waits for the gate
    gate.set()
    worker.join(10)
    assert sink.files == {"/d/f": b"x"}
    assert sink.fsyncs == [("file", "/d/f"), ("directory", "/d")]
    assert [op for op, _ in sink.calls] == ["begin", "begin", "write", "begin", "write",
                                            "commit"]
    with pytest.raises(ValueError, match="unknown sink operations"):
        MemorySink(fail={"fsync": SinkError(Status.E_FAIL, "x")})


def test_writev_with_more_buffers_than_one_call_takes(world: World) -> None:
    """More buffers than IOV_MAX (1024), of uneven sizes: all of them, in order."""
    pieces = [bytes([i % 251]) * (1 + i % 7) for i in range(2500)]
    data = b"".join(pieces)
    copy = world.sink.begin("/", "many", CP, len(data))
    copy.writev(0, [memoryview(piece) if i % 2 else piece for i, piece in enumerate(pieces)])
    assert copy.bytes_written == len(data)
    copy.commit()
    assert world.read("/many") == data
