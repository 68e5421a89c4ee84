"""FileSink against real files in tmp_path: statuses, atomic commit, temp hygiene."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsi.constants import CopyFlags, Status
from gsi.errors import SinkError
from gsi.paths import MAX_SYMLINK_FOLLOWS
from gsi.sink import TEMP_NAME_FORMAT, TEMP_NAME_RE, FileSink, OpenCopy
from gsi.sweep import LOCK_NAME_RE

NONE = CopyFlags.NONE
OW = CopyFlags.OVER_WRITE
CP = CopyFlags.CREATE_PATH


@pytest.fixture
def umask() -> Iterator[int]:
    """Run the test under umask 0o041: it shows that the umask applies, and it tells the
    modes 0o644 / 0o755 apart from 0o666 / 0o777 (which 0o022 or 0o027 would not)."""
    old = os.umask(0o041)
    try:
        yield 0o041
    finally:
        os.umask(old)


@pytest.fixture(params=["auto", "named"])
def temp_files(request: pytest.FixtureRequest) -> str:
    """Both kinds of temp file: unnamed (O_TMPFILE, where the filesystem has it) and named."""
    mode: str = request.param
    return mode


@pytest.fixture
def sink(root: Path, temp_files: str) -> Iterator[FileSink]:
    with FileSink(root, temp_files=temp_files) as s:
        yield s


def copy(
    sink: FileSink, path: str, name: str, data: bytes, flags: CopyFlags = NONE, frag: int = 6144
) -> OpenCopy:
    oc = sink.begin(path, name, flags, len(data))
    for off in range(0, len(data), frag):
        oc.write(off, data[off : off + frag])
    oc.commit()
    return oc


def temps(root: Path) -> list[str]:
    """Every entry under root (not following symlinks) that looks like a temp file (the
    instance lock file of a live sink aside)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.join(dirpath, n) for n in filenames + dirnames
                  if ".gsi-" in n and not LOCK_NAME_RE.fullmatch(n)]
    return found


def entries(directory: Path) -> list[str]:
    """``os.listdir``, less the instance lock file a sink making named temps holds."""
    return [n for n in os.listdir(directory) if not LOCK_NAME_RE.fullmatch(n)]


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not LOCK_NAME_RE.fullmatch(p.name))


@contextlib.contextmanager
def refused(status: Status) -> Iterator[pytest.ExceptionInfo[SinkError]]:
    with pytest.raises(SinkError) as info:
        yield info
    assert info.value.status == status, info.value.reason
    assert info.value.reason


def mode(p: Path) -> int:
    return stat.S_IMODE(p.lstat().st_mode)


# --- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 6143, 6144, 6145, 100_000, 3 * (1 << 20) + 7])
def test_round_trip(sink: FileSink, root: Path, size: int) -> None:
    data = random.Random(size).randbytes(size)
    oc = copy(sink, "/", "f.bin", data)
    assert (root / "f.bin").read_bytes() == data
    assert oc.bytes_written == size
    assert not oc.is_open
    assert temps(root) == []


def test_round_trip_without_fsync_and_with_small_fragments(root: Path) -> None:
    data = bytes(range(256)) * 40
    with FileSink(root, fsync=False, coalesce_bytes=100) as s:
        copy(s, "d", "f", data, CP, frag=7)
    assert (root / "d" / "f").read_bytes() == data


def test_unicode_names(sink: FileSink, root: Path) -> None:
    copy(sink, "/ünï/📁/", "Grüße 😀.txt", "héllo 😀".encode(), CP)
    assert (root / "ünï" / "📁" / "Grüße 😀.txt").read_text("utf-8") == "héllo 😀"


def test_target_and_temp_name(sink: FileSink, root: Path) -> None:
    (root / "a").mkdir()
    oc = sink.begin("a//./", "x.txt", NONE, 3)
    assert oc.target == "/a/x.txt"
    assert oc.file_size == 3
    if sink.temp_files == "auto":  # an O_TMPFILE temp: no name at all, anywhere
        assert oc.temp_name == ""
        assert os.listdir(root / "a") == [] and os.listdir(root) == ["a"]
        oc.abort()
        return
    # A named temp lives in the target directory, under the documented name, which
    # embeds the token of the instance lock file in the root.
    assert os.listdir(root / "a") == [oc.temp_name]
    match = TEMP_NAME_RE.fullmatch(oc.temp_name)
    assert match is not None
    assert (root / f".gsi-instance-{match['instance']}.lock").is_file()
    assert TEMP_NAME_RE.fullmatch(TEMP_NAME_FORMAT.format(instance="0" * 16,
                                                          token="0123456789abcdef"))
    oc.abort()


# --- writes ------------------------------------------------------------------------------


def test_out_of_order_and_overlapping_writes(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", NONE, 30)
    oc.write(20, b"C" * 10)
    oc.write(0, b"A" * 10)
    oc.write(10, b"B" * 10)
    oc.write(5, b"x" * 10)  # overlaps A and B
    oc.write(5, b"y" * 3)  # rewrites part of the overlap
    oc.write(29, b"!")
    oc.write(0, b"")
    oc.commit()
    assert (root / "f").read_bytes() == b"AAAAAyyyxxxxxxxBBBBBCCCCCCCCC!"
    assert oc.bytes_written == 10 * 4 + 3 + 1


def test_caller_may_reuse_its_buffer(sink: FileSink, root: Path) -> None:
    buf = bytearray(b"first")
    oc = sink.begin("", "f", NONE, 10)
    oc.write(0, memoryview(buf))
    buf[:] = b"XXXXX"  # a receiver reuses its receive buffer
    oc.write(5, buf)
    oc.commit()
    assert (root / "f").read_bytes() == b"firstXXXXX"


def test_coalescing_reduces_flushes(root: Path) -> None:
    frag = b"z" * 6144
    with FileSink(root, fsync=False) as s:
        oc = s.begin("", "big", NONE, 1000 * 6144)
        for i in range(1000):
            oc.write(i * 6144, frag)
        oc.commit()
        assert oc.flushes <= 7  # 6 MiB in 1 MiB batches
        assert (root / "big").stat().st_size == 6_144_000
    with FileSink(root, fsync=False, coalesce_bytes=0) as s:
        oc = s.begin("", "big2", NONE, 1000 * 6144)
        for i in range(1000):
            oc.write(i * 6144, frag)
        oc.commit()
        assert oc.flushes == 1000


@st.composite
def write_plans(draw: st.DrawFn) -> tuple[int, int, list[tuple[int, bytes]]]:
    size = draw(st.integers(1, 300))
    cut = sorted(draw(st.sets(st.integers(1, size - 1), max_size=8))) if size > 1 else []
    bounds = [0, *cut, size]
    cover = [(a, bytes([a % 251]) * (b - a)) for a, b in itertools.pairwise(bounds)]
    cover = draw(st.permutations(cover))
    extra = draw(
        st.lists(
            st.tuples(st.integers(0, size - 1), st.integers(0, 40), st.integers(0, 255)),
            max_size=10,
        )
    )
    plan = list(cover)
    for off, n, byte in extra:
        n = min(n, size - off)
        plan.insert(draw(st.integers(0, len(plan))), (off, bytes([byte]) * n))
    return size, draw(st.integers(0, 64)), plan


@settings(max_examples=150, deadline=None)
@given(write_plans())
def test_writes_equal_pwrites_in_order(plan: tuple[int, int, list[tuple[int, bytes]]]) -> None:
    size, coalesce, writes = plan
    model = bytearray(size)
    for off, data in writes:
        model[off : off + len(data)] = data
    with tempfile.TemporaryDirectory() as d, FileSink(d, fsync=False, coalesce_bytes=coalesce) as s:
        oc = s.begin("", "f", NONE, size)
        for off, data in writes:
            oc.write(off, data)
        oc.commit()
        assert Path(d, "f").read_bytes() == model
        assert oc.bytes_written == sum(len(data) for _, data in writes)


def test_write_outside_file_size_aborts(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", NONE, 10)
    oc.write(0, b"12345")
    with refused(Status.INVALIDARG):
        oc.write(8, b"abc")
    assert entries(root) == []
    with refused(Status.E_FAIL):  # the copy has ended
        oc.write(0, b"1")
    with refused(Status.INVALIDARG):
        sink.begin("", "g", NONE, 2).write(-1, b"x")
    assert entries(root) == []


def test_commit_size_mismatch(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", NONE, 10)
    oc.write(0, b"123456789")  # one byte short
    with refused(Status.E_FAIL) as info:
        oc.commit()
    assert "9 bytes" in info.value.reason
    assert entries(root) == []


def test_abort_is_idempotent_and_ends_the_copy(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", NONE, 4)
    oc.write(0, b"ab")
    oc.abort()
    oc.abort()
    assert entries(root) == []
    with refused(Status.E_FAIL):
        oc.write(2, b"cd")
    with refused(Status.E_FAIL):
        oc.commit()
    assert entries(root) == []


def test_abort_after_commit_keeps_the_target(sink: FileSink, root: Path) -> None:
    oc = copy(sink, "", "f", b"data")
    oc.abort()
    assert entries(root) == ["f"]
    assert (root / "f").read_bytes() == b"data"
    with refused(Status.E_FAIL):
        oc.write(0, b"x")
    with refused(Status.E_FAIL):
        oc.commit()
    assert (root / "f").read_bytes() == b"data"


# --- directories and modes ---------------------------------------------------------------


def test_missing_directory_without_create_path(sink: FileSink, root: Path) -> None:
    with refused(Status.PATH_NOT_FOUND) as info:
        sink.begin("/a/b", "f", NONE, 1)
    assert info.value.status == 0x80070003
    assert "/a" in info.value.reason
    (root / "a").mkdir()
    with refused(Status.PATH_NOT_FOUND):
        sink.begin("/a/b/", "f", OW, 1)
    assert tree(root) == ["a"]


@pytest.mark.parametrize("path", ["a/b/c", "/a/b/c/", "a//./b/c/.", "./a/b/c//"])
def test_create_path_creates_every_component(root: Path, umask: int, path: str) -> None:
    (root / "a").mkdir()  # an existing prefix is reused
    with FileSink(root) as s:
        copy(s, path, "f", b"x", CP)
    assert (root / "a" / "b" / "c" / "f").read_bytes() == b"x"
    assert mode(root / "a" / "b") == 0o755 & ~umask == 0o714
    assert mode(root / "a" / "b" / "c") == 0o714
    assert mode(root / "a" / "b" / "c" / "f") == 0o644 & ~umask == 0o604


def test_dir_mode_and_file_mode(root: Path, umask: int) -> None:
    with FileSink(root, dir_mode=0o711, file_mode=0o666) as s:
        copy(s, "new", "f", b"x", CP)
        copy(s, "new", "g", b"", NONE)
    assert mode(root / "new") == 0o711 & ~umask == 0o710
    assert mode(root / "new" / "f") == 0o666  # exactly, umask does not apply
    assert mode(root / "new" / "g") == 0o666
    with FileSink(root, file_mode=0o600) as s:
        copy(s, "new", "h", b"x")
    assert mode(root / "new" / "h") == 0o600


def test_component_that_is_a_file(sink: FileSink, root: Path) -> None:
    (root / "file").write_bytes(b"keep")
    with refused(Status.PATH_NOT_FOUND) as info:
        sink.begin("file/sub", "f", CP, 1)
    assert "not a directory" in info.value.reason
    assert (root / "file").read_bytes() == b"keep"
    assert temps(root) == []


def test_root_must_be_an_existing_directory(tmp_path: Path) -> None:
    with refused(Status.PATH_NOT_FOUND):
        FileSink(tmp_path / "missing")
    (tmp_path / "file").write_bytes(b"")
    with refused(Status.PATH_NOT_FOUND):
        FileSink(tmp_path / "file")


def test_closed_sink(root: Path) -> None:
    s = FileSink(root)
    with s:
        pass
    s.close()  # idempotent
    with pytest.raises(ValueError):
        s.begin("", "f", NONE, 0)
    with pytest.raises(ValueError):
        s.cleanup_stale_temps()


def test_open_copy_outlives_sink_close(root: Path) -> None:
    s = FileSink(root)
    oc = s.begin("", "f", NONE, 2)
    s.close()
    oc.write(0, b"ok")
    oc.commit()
    assert (root / "f").read_bytes() == b"ok"


# --- existing targets --------------------------------------------------------------------


def test_existing_target_without_overwrite(sink: FileSink, root: Path) -> None:
    (root / "f").write_bytes(b"old")
    with refused(Status.ALREADY_EXISTS) as info:
        sink.begin("/", "f", CP, 3)
    assert info.value.status == 0x80070050
    assert (root / "f").read_bytes() == b"old"
    assert entries(root) == ["f"]


def test_overwrite_replaces_only_at_commit(sink: FileSink, root: Path) -> None:
    (root / "f").write_bytes(b"old content")
    oc = sink.begin("", "f", OW, 3)
    oc.write(0, b"new")
    assert (root / "f").read_bytes() == b"old content"
    oc.commit()
    assert (root / "f").read_bytes() == b"new"
    assert entries(root) == ["f"]


def test_overwrite_then_abort_keeps_old_bytes(sink: FileSink, root: Path) -> None:
    (root / "f").write_bytes(b"old content")
    oc = sink.begin("", "f", OW, 3)
    oc.write(0, b"new")
    oc.abort()
    assert (root / "f").read_bytes() == b"old content"
    assert entries(root) == ["f"]


def test_directory_target(sink: FileSink, root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "inner").write_bytes(b"keep")
    with refused(Status.ALREADY_EXISTS):
        sink.begin("", "d", NONE, 1)
    with refused(Status.ACCESS_DENIED):
        sink.begin("", "d", OW | CP, 1)
    assert tree(root) == ["d", "d/inner"]


@pytest.mark.parametrize("link_to", ["inside", "outside", "dangling", "directory"])
def test_symlink_target(sink: FileSink, root: Path, tmp_path: Path, link_to: str) -> None:
    pointee = {
        "inside": root / "real",
        "outside": tmp_path / "out",
        "dangling": root / "no",
        "directory": root / "dir" / "inner",
    }[link_to]
    if link_to == "directory":
        pointee.parent.mkdir()
        (root / "link").symlink_to("dir")
    else:
        (root / "link").symlink_to(pointee)
    if link_to != "dangling":
        pointee.write_bytes(b"pointee bytes")
    with refused(Status.ALREADY_EXISTS):
        sink.begin("", "link", NONE, 3)
    oc = sink.begin("", "link", OW, 3)
    oc.write(0, b"new")
    assert (root / "link").is_symlink()
    oc.commit()
    assert not (root / "link").is_symlink()
    assert (root / "link").read_bytes() == b"new"
    if link_to != "dangling":
        assert pointee.read_bytes() == b"pointee bytes"
    else:
        assert not pointee.exists()
    assert temps(tmp_path) == []


def test_fifo_target(sink: FileSink, root: Path) -> None:
    os.mkfifo(root / "fifo")
    with refused(Status.ALREADY_EXISTS):
        sink.begin("", "fifo", NONE, 1)
    copy(sink, "", "fifo", b"x", OW)
    assert (root / "fifo").read_bytes() == b"x"


def test_target_appears_during_copy(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", NONE, 3)
    oc.write(0, b"new")
    (root / "f").write_bytes(b"someone else's")
    with refused(Status.ALREADY_EXISTS):
        oc.commit()
    assert (root / "f").read_bytes() == b"someone else's"
    assert entries(root) == ["f"]


def test_target_becomes_directory_during_overwrite(sink: FileSink, root: Path) -> None:
    oc = sink.begin("", "f", OW, 3)
    oc.write(0, b"new")
    (root / "f").mkdir()
    (root / "f" / "inner").write_bytes(b"keep")
    with refused(Status.ACCESS_DENIED):
        oc.commit()
    assert tree(root) == ["f", "f/inner"]


def test_concurrent_copies_to_one_target(sink: FileSink, root: Path) -> None:
    first = sink.begin("", "f", OW, 1)
    second = sink.begin("", "f", OW, 1)
    assert first.temp_name != second.temp_name or sink.temp_files == "auto"
    first.write(0, b"1")
    second.write(0, b"2")
    second.commit()
    first.commit()
    assert (root / "f").read_bytes() == b"1"
    assert entries(root) == ["f"]


# --- names and escapes -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["..", "/../etc", "a/../b", "a/b/..", "../", "./.."])
def test_dotdot_anywhere_is_denied(sink: FileSink, root: Path, path: str) -> None:
    (root / "a" / "b").mkdir(parents=True)
    with refused(Status.ACCESS_DENIED):
        sink.begin(path, "f", CP | OW, 1)
    assert tree(root) == ["a", "a/b"]
    assert not (root.parent / "etc").exists()


@pytest.mark.parametrize(
    ("name", "status"),
    [
        (".", Status.ACCESS_DENIED),
        ("..", Status.ACCESS_DENIED),
        ("", Status.INVALIDARG),
        ("a/b", Status.INVALIDARG),
        ("a\x00b", Status.INVALIDARG),
        ("n" * 300, Status.INVALIDARG),  # ENAMETOOLONG
    ],
)
def test_bad_file_names(sink: FileSink, root: Path, name: str, status: Status) -> None:
    with refused(status):
        sink.begin("d", name, CP | OW, 1)
    assert temps(root) == []


def test_nul_in_path_name(sink: FileSink, root: Path) -> None:
    with refused(Status.INVALIDARG):
        sink.begin("a\x00b", "f", CP, 1)
    assert entries(root) == []


def test_absolute_path_lands_under_root(sink: FileSink, root: Path) -> None:
    copy(sink, "/etc", "passwd-test", b"x", CP)
    assert (root / "etc" / "passwd-test").read_bytes() == b"x"
    assert not Path("/etc/passwd-test").exists()


def test_negative_file_size(sink: FileSink, root: Path) -> None:
    with refused(Status.INVALIDARG):
        sink.begin("", "f", NONE, -1)
    assert entries(root) == []


# --- symlinks on the way -----------------------------------------------------------------


@pytest.mark.parametrize("how", ["absolute", "relative", "via-inside-link"])
def test_symlink_component_leading_outside(
    sink: FileSink, root: Path, tmp_path: Path, how: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if how == "absolute":
        (root / "out").symlink_to(outside)
    elif how == "relative":
        (root / "out").symlink_to("../outside")
    else:
        (root / "hop").symlink_to(tmp_path)
        (root / "out").symlink_to("hop/outside")
    for path in ("out", "out/sub/deeper", "/out/"):
        with refused(Status.ACCESS_DENIED) as info:
            sink.begin(path, "f", CP | OW, 1)
        assert "outside" in info.value.reason
    assert os.listdir(outside) == []
    assert temps(tmp_path) == []


def test_symlink_to_missing_outside_is_denied_not_created(
    sink: FileSink, root: Path, tmp_path: Path
) -> None:
    (root / "out").symlink_to(tmp_path / "nowhere")
    with refused(Status.ACCESS_DENIED):
        sink.begin("out", "f", CP, 1)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("relative", [True, False])
def test_symlink_component_inside_root_is_followed(
    sink: FileSink, root: Path, relative: bool
) -> None:
    (root / "real" / "sub").mkdir(parents=True)
    (root / "link").symlink_to("real/sub" if relative else root / "real" / "sub")
    (root / "real" / "up").symlink_to("..")  # inside too
    copy(sink, "link", "f", b"1")
    copy(sink, "/link/new/deeper/", "g", b"2", CP)
    copy(sink, "real/up/real/up/link", "h", b"3")
    assert (root / "real" / "sub" / "f").read_bytes() == b"1"
    assert (root / "real" / "sub" / "new" / "deeper" / "g").read_bytes() == b"2"
    assert (root / "real" / "sub" / "h").read_bytes() == b"3"
    assert (root / "link").is_symlink()


def test_symlink_follow_limit(sink: FileSink, root: Path) -> None:
    (root / "self").symlink_to(".")
    copy(sink, "/".join(["self"] * MAX_SYMLINK_FOLLOWS), "f", b"x")
    assert (root / "f").read_bytes() == b"x"
    with refused(Status.ACCESS_DENIED):
        sink.begin("/".join(["self"] * (MAX_SYMLINK_FOLLOWS + 1)), "g", NONE, 1)


@pytest.mark.parametrize("loop", ["pair", "self"])
def test_symlink_loop(sink: FileSink, root: Path, loop: str) -> None:
    if loop == "pair":
        (root / "a").symlink_to("b")
        (root / "b").symlink_to("a")
    else:
        (root / "a").symlink_to("a")
    with refused(Status.ACCESS_DENIED) as info:
        sink.begin("a/x", "f", CP, 1)
    assert "symlink" in info.value.reason
    assert tree(root) == (["a", "b"] if loop == "pair" else ["a"])


def test_dangling_symlink_component(sink: FileSink, root: Path) -> None:
    (root / "dl").symlink_to("missing/dir")
    with refused(Status.PATH_NOT_FOUND) as info:
        sink.begin("dl/sub", "f", CP, 1)
    assert "dangling" in info.value.reason
    assert tree(root) == ["dl"]  # the link's target is never created


def test_symlink_component_to_a_file(sink: FileSink, root: Path) -> None:
    (root / "file").write_bytes(b"keep")
    (root / "lf").symlink_to("file")
    with refused(Status.PATH_NOT_FOUND) as info:
        sink.begin("lf", "f", CP, 1)
    assert "not a directory" in info.value.reason
    assert (root / "file").read_bytes() == b"keep"


def _statuses_as_unprivileged(root: Path, attempts: list[tuple[str, CopyFlags]]) -> list[str]:
    """Run begin() for each attempt without privileges; root drops to nobody in a child."""
    with FileSink(root) as s:
        if os.geteuid() != 0:
            return [_status_of(s, path, flags) for path, flags in attempts]
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop privileges, report, exit without running any cleanup
            code = 0
            try:
                os.close(rfd)
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                out = ",".join(_status_of(s, path, flags) for path, flags in attempts)
                os.write(wfd, out.encode())
            except BaseException:
                code = 1
            os._exit(code)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            out = r.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
        return out.split(",")


def _status_of(s: FileSink, path: str, flags: CopyFlags) -> str:
    try:
        s.begin(path, "f", flags, 1).abort()
    except SinkError as exc:
        return Status(exc.status).name
    return "OK"


def test_permission_denied(root: Path) -> None:
    for name, perm in [("secret", 0o000), ("ro", 0o555), ("rw", 0o777)]:
        (root / name).mkdir()
        (root / name).chmod(perm)  # exactly, whatever the umask
    try:
        statuses = _statuses_as_unprivileged(
            root, [("secret", NONE), ("secret/sub", CP), ("ro", NONE), ("ro/new", CP), ("rw", NONE)]
        )
    finally:
        (root / "secret").chmod(0o700)
        (root / "ro").chmod(0o700)
    assert statuses == ["ACCESS_DENIED"] * 4 + ["OK"]
    assert tree(root) == ["ro", "rw", "secret"]


# --- stale temps -------------------------------------------------------------------------


def test_cleanup_stale_temps(root: Path, tmp_path: Path) -> None:
    dead, live, unknown = "0123456789abcdef", "fedcba9876543210", "00000000000000aa"
    hexes = "0011223344556677"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / f".gsi-instance-{dead}.lock").write_bytes(b"")  # nobody holds it: dead
    (root / f".gsi-instance-{live}.lock").write_bytes(b"")
    held = os.open(root / f".gsi-instance-{live}.lock", os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another open file holds it: alive
    (root / f".gsi-instance-{'b' * 16}.lock").symlink_to("sub/ordinary.txt")  # not a lock
    stale = [f".gsi-{dead}-{hexes}.part", f"sub/deep/.gsi-{dead}-{'f' * 16}.part"]
    keep = [
        f".gsi-{live}-{hexes}.part",  # a live instance's temp
        f".gsi-{unknown}-{hexes}.part",  # no lock file: not ours, whatever it looks like
        f".gsi-{'b' * 16}-{hexes}.part",  # its "lock file" is a symlink
        f".gsi-{dead}-{hexes}.part.bak",
        f"x.gsi-{dead}-{hexes}.part",
        f".gsi-{dead}-{hexes.upper()}.part",
        f".gsi-{dead}-{hexes[:15]}.part",
        "sub/ordinary.txt",
    ]
    for name in stale + keep:
        (root / name).write_bytes(b"x")
    (root / f".gsi-{dead}-{'1' * 16}.part").mkdir()  # a directory: kept
    (root / f".gsi-{dead}-{'2' * 16}.part").symlink_to("sub/ordinary.txt")  # a symlink: kept
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / f".gsi-{dead}-{hexes}.part").write_bytes(b"x")
    (root / "out").symlink_to(outside)  # never walked into
    try:
        with FileSink(root, temp_files="named") as sink:
            oc = sink.begin("sub", "open", NONE, 1)  # this sink's open copy: kept
            before = set(tree(root))
            assert sink.cleanup_stale_temps() == sorted(stale)
            assert set(tree(root)) == before - set(stale)
            assert not (root / f".gsi-instance-{dead}.lock").exists()  # swept too
            assert (root / f".gsi-instance-{live}.lock").exists()
            assert (outside / f".gsi-{dead}-{hexes}.part").exists()
            oc.write(0, b"y")
            oc.commit()
            assert (root / "sub" / "open").read_bytes() == b"y"
            assert sink.cleanup_stale_temps() == []
    finally:
        os.close(held)
    # The sink removed its own lock file at close; the live one's stays.
    assert sorted(p.name for p in root.glob(".gsi-instance-*")) == [
        f".gsi-instance-{'b' * 16}.lock", f".gsi-instance-{live}.lock"]


# --- space -------------------------------------------------------------------------------


def test_preallocate(root: Path) -> None:
    with FileSink(root, preallocate=True, temp_files="named") as s:
        oc = s.begin("", "f", NONE, 10_000)
        assert (root / oc.temp_name).stat().st_size == 10_000
        oc.write(0, b"a" * 10_000)
        oc.commit()
    assert (root / "f").read_bytes() == b"a" * 10_000


def test_free_space_check_refuses_huge_file(sink: FileSink, root: Path) -> None:
    with refused(Status.DISK_FULL):
        sink.begin("new/dirs", "f", CP, 1 << 62)
    assert entries(root) == []  # refused before creating anything
    with FileSink(root, check_free_space=False) as s:
        s.begin("", "f", NONE, 1 << 62).abort()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); skipped where mounting is not possible."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_disk_full_at_begin(small_tmpfs: Path) -> None:
    with FileSink(small_tmpfs) as s:
        with refused(Status.DISK_FULL) as info:
            s.begin("a/b", "f", CP, 2 << 20)
        assert info.value.status == 0x80070070
        assert entries(small_tmpfs) == []
        copy(s, "a/b", "f", b"x" * 100_000, CP)  # fits


@pytest.mark.parametrize("coalesce", [0, 1 << 20])
def test_disk_full_while_writing(small_tmpfs: Path, coalesce: int) -> None:
    with FileSink(small_tmpfs, check_free_space=False, coalesce_bytes=coalesce) as s:
        oc = s.begin("", "f", NONE, 2 << 20)
        with refused(Status.DISK_FULL):
            for off in range(0, 2 << 20, 6144):
                oc.write(off, b"x" * min(6144, (2 << 20) - off))
            oc.commit()
        assert not oc.is_open
    assert entries(small_tmpfs) == []


def test_disk_full_when_preallocating(small_tmpfs: Path) -> None:
    with (
        FileSink(small_tmpfs, check_free_space=False, preallocate=True) as s,
        refused(Status.DISK_FULL),
    ):
        s.begin("", "f", NONE, 2 << 20)
    assert entries(small_tmpfs) == []


def test_read_only_filesystem(small_tmpfs: Path) -> None:
    (small_tmpfs / "d").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with FileSink(small_tmpfs) as s:
        with refused(Status.ACCESS_DENIED) as info:
            s.begin("d", "f", NONE, 1)
        assert "EROFS" in info.value.reason
        with refused(Status.ACCESS_DENIED):
            s.begin("new", "f", CP, 1)


@pytest.mark.parametrize("linux", [False, True])
def test_linux_create_path_leaves_the_last_component_unless_slash(
    tmp_path: Path, linux: bool
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with FileSink(root, fsync=False, linux_create_path=linux) as sink:
        if linux:
            with pytest.raises(SinkError) as info:
                sink.begin("/a/b", "f.txt", CopyFlags.CREATE_PATH, 1)
            assert info.value.status == Status.PATH_NOT_FOUND
            assert (root / "a").is_dir() and not (root / "a" / "b").exists()
        else:
            sink.begin("/a/b", "f.txt", CopyFlags.CREATE_PATH, 1).abort()
            assert (root / "a" / "b").is_dir()
        copy = sink.begin("/a/b/", "f.txt", CopyFlags.CREATE_PATH, 1)
        copy.write(0, b"x")
        copy.commit()
    assert (root / "a" / "b" / "f.txt").read_bytes() == b"x"
