"""The benchmark suite's own arithmetic and plumbing (no figure is asserted: performance is
measured in benchmarks/, never here).

The per-WRITE counts are checked against sizes built from whole fragments plus a tail, the
report's per-WRITE figures for an old JSON against the run's own, and one tiny case over
``vmbus-emu://`` runs end to end: real receiver, bare loop and host driver processes.
"""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from benchmarks import matrix, procs, report, run
from benchmarks.matrix import STOCK, Case


@pytest.mark.parametrize(("whole", "tail"), [(0, 1), (1, 0), (1, 1), (10, STOCK - 1),
                                             (10_922, 4096), (11, 0)])
def test_writes_per_file_counts_whole_fragments_and_a_tail(whole: int, tail: int) -> None:
    size = whole * STOCK + tail
    assert matrix.writes_per_file(size, STOCK) == whole + (1 if tail else 0)


def test_an_empty_file_sends_no_write() -> None:
    assert matrix.writes_per_file(0, STOCK) == 0


def test_case_writes_multiply_files_and_connections() -> None:
    one = Case(kind="copy", transport="unix", size=5 * STOCK + 7, window=64)
    files = Case(kind="files", transport="unix", size=4096, window=1, files=500)
    conns = Case(kind="conns", transport="unix", size=STOCK * 3, window=64, connections=8)
    assert (one.writes, files.writes, conns.writes) == (6, 500, 24)


def test_per_write_spreads_cpu_over_every_repetition() -> None:
    case = Case(kind="copy", transport="tcp", size=4 * STOCK, window=1, reps=5)
    assert run.per_write(case, 0.002) == pytest.approx(2000 / 20)


def test_report_derives_per_write_from_an_older_json() -> None:
    """A JSON from before the per-WRITE figures (CPU s per GiB only) gives the figure the
    run computes from the same CPU seconds."""
    case = Case(kind="conns", transport="unix", size=STOCK * 100 + 1, window=64,
                connections=4, reps=3)
    seconds = 0.37
    gib_moved = case.total_bytes * case.reps / (1 << 30)
    old = asdict(case)
    old["receiver_cpu_s_per_gib"] = seconds / gib_moved
    assert report.per_write(old, "receiver") == pytest.approx(run.per_write(case, seconds))
    old["receiver_cpu_us_per_write"] = 1.5  # a newer JSON: its own figure is used
    assert report.per_write(old, "receiver") == 1.5


def test_scratch_leaves_nothing_behind(tmp_path: Path) -> None:
    for size in (0, 5, (1 << 20) + 3):
        procs.scratch(tmp_path, size)
    assert os.listdir(tmp_path) == []


def test_same_cpu_pins_servers_and_clients_together() -> None:
    saved = procs.PIN
    try:
        procs.set_pinning(same_cpu=True)
        assert procs.PIN is not None and procs.PIN["server"] == procs.PIN["client"]
        assert "all pinned" in procs.placement(procs.PIN)
        procs.set_pinning(False)
        assert procs.PIN is None
        assert "not pinned" in procs.placement(procs.PIN)
    finally:
        procs.PIN = saved


def test_vmbus_case_runs_end_to_end(tmp_path: Path) -> None:
    """The stop-and-wait case over vmbus-emu:// with a small file that ends mid-fragment:
    the receiver and the bare loop on the ring both get every WRITE, the file arrives
    whole (checked by SHA-256 inside run_case), and the report finds the case."""
    saved = procs.PIN
    procs.set_pinning(False)  # the test suite runs in parallel with other work
    try:
        quick_ring = [c for c in matrix.quick() if c.transport == "vmbus-emu"]
        assert len(quick_ring) == 1 and quick_ring[0].window == 1
        assert quick_ring[0].echo == "full" and quick_ring[0].baselines == ("bare",)
        case = replace(quick_ring[0], size=40 * STOCK + 100, reps=1)
        ws = run.Workspace(tmp_path.resolve())
        result = run.run_case(case, 0, ws)
    finally:
        procs.PIN = saved
    assert result["verified"] and result["writes_per_run"] == 41
    assert result["receiver_cpu_us_per_write"] >= 0 and result["host_cpu_us_per_write"] > 0
    assert set(result["baselines"]) == {"bare"}
    assert len(result["runs"]) == len(result["baselines"]["bare"]["runs"]) == 1
    doc = {"machine": {"pinning": None}, "cases": [result]}
    rows = [r for r in report.targets(doc) if "vmbus-emu" in r["target"]]
    assert len(rows) == 2  # its CPU per message, and its ratio to the loop on the ring
    assert rows[0]["measured"] == result["receiver_cpu_us_per_write"]
    assert rows[0]["threshold"] == "<= 15 us"
    assert rows[1]["ratio"] == result["baselines"]["bare"]["ratio"]
    # the root and both rings (the receiver's and the bare loop's) are gone
    assert not (tmp_path / "root-0").exists() and not list(tmp_path.glob("0-*"))


def _perf_usable() -> bool:
    import shutil
    import subprocess
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(["perf", "stat", "-e", "syscalls:sys_enter_futex", "true"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _perf_usable(), reason="perf with syscall tracepoints is not usable")
def test_rx_profile_splits_the_receivers_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    """A small run of benchmarks/rx_profile.py against a real receiver: it counts the
    system calls per chunk and splits the samples by thread and place, shares summing to
    the whole."""
    from benchmarks import rx_profile

    assert rx_profile.main(["--size-mib", "24", "--copies", "1"]) == 0
    out = capsys.readouterr().out
    assert "system calls per chunk: recvfrom" in out
    shares = [float(line.split("%")[0].split()[-1])
              for line in out.splitlines() if line.startswith("  ")]
    assert shares and abs(sum(shares) - 100) < 1
    assert any(line.split()[:2] == ["event", "loop"] for line in out.splitlines()
               if line.startswith("  "))


def test_rx_compare_runs_two_trees(capsys: pytest.CaptureFixture[str]) -> None:
    """benchmarks/rx_compare.py against this same tree: two real receivers, alternating
    copies checked by the client; a line per tree and the ratio line."""
    from benchmarks import rx_compare

    assert rx_compare.main(["--compare", str(procs.REPO), "--reps", "1", "--size-mib", "24",
                            "--transport", "tcp"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tcp, window 64, full echo")
    assert [line.split()[0] for line in out[1:3]] == ["this", "other"]
    assert out[3].startswith("  this / other: CPU ")


def test_rx_compare_refuses_a_directory_that_is_no_tree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import rx_compare

    with pytest.raises(SystemExit) as exc:
        rx_compare.main(["--compare", str(tmp_path)])
    assert exc.value.code == 2
    assert "no source tree of gsi" in capsys.readouterr().err
