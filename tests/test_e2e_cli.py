"""End to end through both CLIs as subprocesses: ``gsi-receiver`` and ``host-sim copy``.

One receiver (module-scoped) listens on TCP (127.0.0.1) and on a Unix socket, configured
for 65536-byte fragments so that both the stock 6144 and the larger fragment size work.
Each ``host-sim copy`` run copies every size of the matrix in one go (``A B C ... DEST``),
which also covers several files per run and the printed summary line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import (
    ReceiverProcess,
    random_bytes,
    run_host_sim,
    running_receiver,
    short_tempdir,
    temp_files,
)

SMALL_SIZES = (0, 1, 6143, 6144, 6145)
BIG_SIZE = 3 * 1024 * 1024
BIG_FRAGMENT = 65536

COPIED_RE = r"copied (?P<src>\S+) -> (?P<dest>\S+): (?P<size>\d+) bytes in [\d.]+ s \([\d.]+ MB/s\)"
SUMMARY_RE = r"^(?P<n>\d+) files, (?P<total>\d+) bytes in [\d.]+ s \([\d.]+ MB/s\)$"


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    root = tmp_path_factory.mktemp("e2e-root")
    with short_tempdir() as sockdir, running_receiver(
            root, ["tcp://127.0.0.1:0", f"unix://{sockdir}/rx.sock"],
            ["--max-fragment", str(BIG_FRAGMENT)]) as rx:
        yield rx


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    src = tmp_path_factory.mktemp("e2e-src")
    out = {}
    for size in (*SMALL_SIZES, BIG_SIZE):
        path = src / f"s{size}.bin"
        path.write_bytes(random_bytes(size, seed=size))
        out[size] = path
    return out


def _url(rx: ReceiverProcess, transport: str) -> str:
    (url,) = [u for u in rx.urls if u.startswith(f"{transport}://")]
    return url


def _check_stdout(stdout: str, files: list[Path], dest: str) -> None:
    """One ``copied`` line per file, in order, then (for several files) the summary."""
    lines = stdout.splitlines()
    copied = [re.fullmatch(COPIED_RE, line) for line in lines[:len(files)]]
    assert all(copied), stdout
    for match, path in zip(copied, files, strict=True):
        assert match is not None
        assert match["src"] == str(path)
        assert match["dest"] == dest.rstrip("/") + "/" + path.name
        assert int(match["size"]) == path.stat().st_size
    if len(files) > 1:
        assert len(lines) == len(files) + 1, stdout
        summary = re.fullmatch(SUMMARY_RE, lines[-1])
        assert summary is not None, stdout
        assert int(summary["n"]) == len(files)
        assert int(summary["total"]) == sum(p.stat().st_size for p in files)
    else:
        assert len(lines) == 1, stdout


MATRIX = [
    pytest.param(transport, window, fragment, big,
                 id=f"{transport}-w{window}-f{fragment}{'-3MiB' if big else ''}")
    for transport in ("tcp", "unix")
    for window in (1, 32)
    for fragment in (6144, BIG_FRAGMENT)
    # the 3 MiB file only where it adds something: both extremes on each transport
    for big in [(window, fragment) in ((1, 6144), (32, BIG_FRAGMENT))]
]


@pytest.mark.parametrize(("transport", "window", "fragment", "big"), MATRIX)
def test_copy_matrix_byte_identical(receiver: ReceiverProcess, sources: dict[int, Path],
                                    transport: str, window: int, fragment: int,
                                    big: bool) -> None:
    files = [sources[s] for s in SMALL_SIZES] + ([sources[BIG_SIZE]] if big else [])
    dest = f"/matrix/{transport}-{window}-{fragment}/"
    result = run_host_sim(_url(receiver, transport), "--window", str(window),
                          "--fragment-size", str(fragment), "--create-full-path",
                          *files, dest)
    assert result.returncode == 0, result.stderr + receiver.log
    assert result.stderr == ""
    _check_stdout(result.stdout, files, dest)
    target_dir = receiver.root / dest.strip("/")
    for path in files:
        assert (target_dir / path.name).read_bytes() == path.read_bytes(), path.name
    assert sorted(p.name for p in target_dir.iterdir()) == sorted(p.name for p in files)
    assert temp_files(receiver.root) == []


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_trimmed_writes_byte_identical(receiver: ReceiverProcess, sources: dict[int, Path],
                                       transport: str) -> None:
    files = [sources[s] for s in SMALL_SIZES]
    dest = f"/trimmed/{transport}/"
    result = run_host_sim(_url(receiver, transport), "--trimmed-writes", "--window", "32",
                          "--create-full-path", *files, dest)
    assert result.returncode == 0, result.stderr
    _check_stdout(result.stdout, files, dest)
    for path in files:
        assert (receiver.root / dest.strip("/") / path.name).read_bytes() == path.read_bytes()


def test_name_renames_the_single_source(receiver: ReceiverProcess,
                                        sources: dict[int, Path]) -> None:
    source = sources[6145]
    result = run_host_sim(receiver.url, "--name", "renamed ü.dat", "--create-full-path",
                          source, "/named/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        line for line in result.stdout.splitlines()
        if re.fullmatch(rf"copied {re.escape(str(source))} -> /named/renamed ü\.dat: 6145 "
                        r"bytes in [\d.]+ s \([\d.]+ MB/s\)", line)]
    assert len(result.stdout.splitlines()) == 1  # no summary line for a single file
    assert (receiver.root / "named" / "renamed ü.dat").read_bytes() == source.read_bytes()
    assert not (receiver.root / "named" / source.name).exists()


def test_existing_target_fails_with_status_1_and_force_overwrites(
        receiver: ReceiverProcess, tmp_path: Path) -> None:
    first, second = tmp_path / "v1" / "f.txt", tmp_path / "v2" / "f.txt"
    first.parent.mkdir()
    second.parent.mkdir()
    first.write_bytes(b"first version\n")
    second.write_bytes(b"second, longer version\n")
    ok = run_host_sim(receiver.url, "--create-full-path", first, "/force/")
    assert ok.returncode == 0, ok.stderr
    refused = run_host_sim(receiver.url, second, "/force/")
    assert refused.returncode == 1
    assert refused.stdout == ""
    assert refused.stderr.strip() == (
        f"host-sim: copy of {second} failed: START refused: "
        "0x80070050: the file exists (use --force to overwrite)")
    assert (receiver.root / "force" / "f.txt").read_bytes() == b"first version\n"
    forced = run_host_sim(receiver.url, "--force", second, "/force/")
    assert forced.returncode == 0, forced.stderr
    assert (receiver.root / "force" / "f.txt").read_bytes() == b"second, longer version\n"


def test_failure_in_a_multi_file_run_exits_1_after_copying_the_earlier_files(
        receiver: ReceiverProcess, tmp_path: Path) -> None:
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(random_bytes(10000, seed=1))
    b.write_bytes(random_bytes(20000, seed=2))
    (receiver.root / "multi-fail").mkdir()
    (receiver.root / "multi-fail" / "b.bin").write_bytes(b"already here")
    result = run_host_sim(receiver.url, a, b, "/multi-fail/")
    assert result.returncode == 1
    assert re.fullmatch(COPIED_RE, result.stdout.strip()), result.stdout  # a only, no summary
    assert f"copy of {b} failed" in result.stderr
    assert "0x80070050" in result.stderr
    assert (receiver.root / "multi-fail" / "a.bin").read_bytes() == a.read_bytes()
    assert (receiver.root / "multi-fail" / "b.bin").read_bytes() == b"already here"


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["{missing}", "/d/"], r"host-sim: \S+missing\.bin is not a readable file",
                 id="missing-source"),
    pytest.param(["--name", "x", "{src}", "{src}", "/d/"], "--name works with one SOURCE only",
                 id="name-with-two-sources"),
    pytest.param(["{src}"], "copy needs at least one SOURCE and a DEST_DIR", id="no-dest"),
    pytest.param(["--window", "0", "{src}", "/d/"], "must be between 1 and 255",
                 id="window-0"),
    pytest.param(["--window", "256", "{src}", "/d/"], "must be between 1 and 255",
                 id="window-256"),
])
def test_usage_errors_exit_2(receiver: ReceiverProcess, tmp_path: Path, args: list[str],
                             message: str) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    args = [a.format(src=src, missing=tmp_path / "missing.bin") for a in args]
    result = run_host_sim(receiver.url, *args)
    assert result.returncode == 2, result
    assert re.search(message, result.stderr), result.stderr
    assert result.stdout == ""


def test_bad_url_exits_2(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    result = run_host_sim("ftp://127.0.0.1:1", src, "/d/")
    assert result.returncode == 2
    assert result.stderr.startswith("host-sim: ")
    assert "ftp" in result.stderr


def test_nobody_listening_exits_1(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"x")
    with short_tempdir() as d:
        result = run_host_sim(f"unix://{d}/nobody.sock", src, "/d/")
    assert result.returncode == 1
    assert result.stderr.startswith("host-sim: ")
    assert result.stdout == ""
