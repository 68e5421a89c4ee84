"""A receiver killed with SIGKILL mid-copy, then restarted on the same root.

The dead receiver cannot clean up: its temp files stay, and the targets must be intact
(an overwritten file keeps its old content, a new one does not exist). The next receiver
removes, before it listens, exactly the temp files it can prove are stale: regular files
named ``.gsi-<pid>-<16 hex>.part`` whose pid is dead; never anything else (a live pid's
temp, near-miss names, a symlink or directory with a temp name, the symlink's target).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from pathlib import Path

import trio
from fault_helpers import content, snapshot

from gsi.testing import guest_process
from host_sim import FaultyHost, copy_vm_file, parse_fault

OLD = b"the old content survives a killed receiver\n" * 1000


def start_receiver(root: Path, sock: Path) -> tuple[subprocess.Popen[str], str]:
    """``gsi-receiver`` in a subprocess; returns it and the URL it listens on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gsi.cli", "--root", str(root), "--listen", f"unix://{sock}",
         "--no-fsync", "--log-level", "WARNING"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise AssertionError(f"the receiver did not start: {line!r}")
    return proc, line.removeprefix("listening on ").strip()


async def test_sigkill_mid_copy_then_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "keep.bin").write_bytes(OLD)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"a symlink's target, outside the root\n")
    data = random.Random(7).randbytes(4 << 20)

    proc, url = start_receiver(root, tmp_path / "one.sock")
    try:
        async with FaultyHost(url, window=8, answer_timeout=10) as overwrite, \
                FaultyHost(url, window=8, answer_timeout=10) as create:
            with trio.fail_after(20):
                # Two open copies, each past the 1 MiB write buffer: data is on disk.
                for host, name in ((overwrite, "keep.bin"), (create, "new.bin")):
                    report = await host.copy(data, "/d", name=name, force=True,
                                             plan=[parse_fault("abandon:at=300")])
                    assert report.outcome == "abandoned", report
                    assert all(a.status == 0 for a in report.answers)
            stale = sorted(p.name for p in (root / "d").glob(f".gsi-{proc.pid}-*.part"))
            assert len(stale) == 2
            assert all((root / "d" / n).stat().st_size > 512 << 10 for n in stale)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The dead receiver left its temp files; the targets are as they were.
    assert content(root / "d" / "keep.bin") == OLD
    assert not (root / "d" / "new.bin").exists()
    assert sorted(p.name for p in (root / "d").glob(".gsi-*.part")) == stale

    # Things cleanup must never touch, next to the stale temps and deeper down.
    dead = proc.pid
    (root / "d" / "sub").mkdir()
    decoys = {
        f"d/.gsi-{os.getpid()}-0123456789abcdef.part": "a live pid's temp",
        f"d/sub/.gsi-{os.getpid()}-fedcba9876543210.part": "a live pid's temp",
        f"d/.gsi-{dead}-0123456789ABCDEF.part": "upper-case hex",
        f"d/.gsi-{dead}-0123456789abcde.part": "15 hex digits",
        f"d/.gsi-{dead}-0123456789abcdef.part.bak": "a suffix",
        f"d/x.gsi-{dead}-0123456789abcdef.part": "a prefix",
        f"d/.gsi-0{dead}-0123456789abcdef.part": "a leading zero",
        "d/report.part": "an ordinary name",
    }
    for rel, why in decoys.items():
        (root / rel).write_text(why)
    (root / f"d/.gsi-{dead}-aaaaaaaaaaaaaaaa.part").symlink_to(outside)
    (root / f"d/sub/.gsi-{dead}-bbbbbbbbbbbbbbbb.part").mkdir()
    (root / f"d/sub/.gsi-{dead}-cccccccccccccccc.part").write_text("stale, deeper down")
    before = snapshot(root)
    outside_before = outside.read_bytes()

    with guest_process(root) as guest:  # logs at INFO
        # The receiver cleans up before it announces that it listens.
        after = snapshot(root)
        removed = sorted(set(before) - set(after))
        assert removed == sorted([f"d/{n}" for n in stale]
                                 + [f"d/sub/.gsi-{dead}-cccccccccccccccc.part"])
        assert all(after[rel] == before[rel] for rel in after)
        assert outside.read_bytes() == outside_before
        log = guest.log()
        for rel in removed:
            assert rel in log, log
        # And the restarted receiver serves: the interrupted copies now go through.
        source = tmp_path / "source"
        source.write_bytes(data)
        with trio.fail_after(20):
            for name in ("keep.bin", "new.bin"):
                await copy_vm_file(guest.url, source, "/d", name=name, force=True, window=16)
        assert content(root / "d" / "keep.bin") == data
        assert content(root / "d" / "new.bin") == data
