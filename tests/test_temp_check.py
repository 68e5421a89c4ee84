"""Unnamed temp files need ``/proc`` to be committed (``linkat`` through
``/proc/self/fd/N``). The sink checks that once, before any copy, and falls back to named
temp files with one warning when it fails.

For real: the receiver runs in its own mount namespace (``unshare --mount``, root only)
where ``/proc`` is unmounted or hidden under a tmpfs, ``host-sim`` copies a file over a
Unix socket, and the file must be committed with no temp file left. In-process, the
sink's ``/proc/self/fd`` is pointed at an empty directory, which is what a tmpfs over
``/proc`` gives a lookup there (ENOENT); everything else is real.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path

import pytest
from e2e_helpers import ReceiverProcess, open_temps, run_host_sim, short_tempdir, temp_files

import gsi.temps
from gsi.constants import CopyFlags
from gsi.sink import FileSink
from gsi.sweep import LOCK_NAME_RE

FALLBACK = (r"unnamed temp files \(O_TMPFILE\) cannot be committed here: (.*); using named"
            r" temp files \(\.gsi-\*\.part\) instead$")
HIDE_PROC = {
    "proc-unmounted": "umount -l /proc",
    "tmpfs-over-proc": "mount -t tmpfs none /proc",
}


def _unnamed_temps_here(root: Path) -> bool:
    """Whether O_TMPFILE files can be made in ``root`` (tmpfs, ext4, xfs, btrfs can)."""
    try:
        fd = os.open(root, os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


def _copy(sink: FileSink, name: str, data: bytes) -> None:
    oc = sink.begin("/", name, CopyFlags.NONE, len(data))
    oc.write(0, data[: len(data) // 2])
    oc.write(len(data) // 2, data[len(data) // 2 :])
    oc.commit()


def _fallback_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gsi.sink" and "cannot be committed" in r.getMessage()]


def test_with_a_working_proc_temps_stay_unnamed(
        root: Path, caplog: pytest.LogCaptureFixture) -> None:
    if not _unnamed_temps_here(root):
        pytest.skip("no O_TMPFILE on this filesystem")
    caplog.set_level(logging.WARNING)
    with FileSink(root, fsync=False) as sink:
        sink.check_temp_files()
        assert sink.unnamed_temps
        oc = sink.begin("/", "a.bin", CopyFlags.NONE, 3)
        assert oc.temp_name == ""
        oc.write(0, b"abc")
        oc.commit()
    assert os.listdir(root) == ["a.bin"]  # the check's name is gone, no lock file was made
    assert _fallback_records(caplog) == []


def test_without_proc_the_first_begin_falls_back_to_named_temps(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    if not _unnamed_temps_here(root):
        pytest.skip("no O_TMPFILE on this filesystem")
    hidden = tmp_path / "empty-proc-self-fd"  # what a tmpfs over /proc shows there
    hidden.mkdir()
    monkeypatch.setattr(gsi.temps, "_PROC_FD", str(hidden))
    caplog.set_level(logging.WARNING)
    data = random.Random(1).randbytes(100_000)
    with FileSink(root, fsync=False) as sink:
        assert sink.unnamed_temps  # not checked yet
        oc = sink.begin("/", "first.bin", CopyFlags.NONE, len(data))
        assert not sink.unnamed_temps
        assert gsi.temps.TEMP_NAME_RE.fullmatch(oc.temp_name)
        oc.write(0, data)
        oc.commit()
        _copy(sink, "second.bin", data)
        assert sorted(n for n in os.listdir(root) if not LOCK_NAME_RE.fullmatch(n)) == [
            "first.bin", "second.bin"]
    assert (root / "first.bin").read_bytes() == (root / "second.bin").read_bytes() == data
    (message,) = _fallback_records(caplog)
    assert f"linking one through {hidden} failed: ENOENT" in message
    assert sorted(os.listdir(root)) == ["first.bin", "second.bin"]


def test_named_temp_files_are_not_checked(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(gsi.temps, "_PROC_FD", str(tmp_path / "nowhere"))
    caplog.set_level(logging.WARNING)
    with FileSink(root, fsync=False, temp_files="named") as sink:
        sink.check_temp_files()
        assert not sink.unnamed_temps
        _copy(sink, "a.bin", b"xyz")
    assert _fallback_records(caplog) == []
    assert os.listdir(root) == ["a.bin"]


def _can_hide_proc(how: str) -> bool:
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            f"{how} && test ! -e /proc/self/fd"],
                           capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.parametrize("hide", list(HIDE_PROC))
def test_receiver_without_proc_commits_with_named_temps(hide: str) -> None:
    how = HIDE_PROC[hide]
    if os.geteuid() != 0 or not _can_hide_proc(how):
        pytest.skip("cannot make a mount namespace without /proc here (unshare --mount "
                    "needs root)")
    prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
              f'{how} && exec "$@"', "sh"]
    with short_tempdir() as top:
        root = top / "root"
        root.mkdir()
        if not _unnamed_temps_here(root):
            pytest.skip("no O_TMPFILE on this filesystem: nothing to fall back from")
        source = top / "data.bin"
        data = random.Random(2).randbytes(3 << 20)
        source.write_bytes(data)
        rx = ReceiverProcess(root, [f"unix://{top}/rx.sock"], ["--no-fsync"], prefix=prefix)
        try:
            assert "ENOENT" in rx.wait_log(FALLBACK)[1]  # logged before listening
            result = run_host_sim(rx.url, "--create-full-path", source, "/in/")
            assert result.returncode == 0, result.stderr + rx.log
            assert (root / "in" / "data.bin").read_bytes() == data
            assert temp_files(root) == [] and open_temps(root, rx.proc.pid) == []
        finally:
            rc = rx.stop()
        assert rc == 0, rx.log
        assert len([line for line in rx.log.splitlines() if "temp files" in line]) == 1
        assert "Traceback" not in rx.log
        assert sorted(p.name for p in root.rglob("*")) == ["data.bin", "in"]
