"""A receiver killed with SIGKILL mid-copy, then restarted on the same root.

The targets must be intact after the kill (an overwritten file keeps its old content, a
new one does not exist). With unnamed temp files (``O_TMPFILE``, the default where the
filesystem has it) the dead receiver leaves nothing at all. With named ones
(``--temp-files named``) its temps stay, and the next receiver removes, before it
listens, exactly those it can prove stale: regular files named
``.gsi-<instance>-<16 hex>.part`` whose instance lock file ``ROOT/.gsi-instance-<instance>.lock``
exists and is locked by no process; never anything else (a live instance's temps, names
with no lock file, near-miss names, a symlink or directory with a temp name, the
symlink's target). The restarted receiver may have any pid, the dead one's included
(pid 1 of a pid namespace, both times).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import pytest
import trio
from e2e_helpers import open_temps
from fault_helpers import content, snapshot

from gsi.testing import guest_process
from host_sim import FaultyHost, copy_vm_file, parse_fault

OLD = b"the old content survives a killed receiver\n" * 1000
UNSHARE = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount-proc"]


def start_receiver(root: Path, sock: Path, *extra: str,
                   prefix: Sequence[str] = ()) -> tuple[subprocess.Popen[str], str]:
    """``gsi-receiver`` in a subprocess; returns it and the URL it listens on."""
    proc = subprocess.Popen(
        [*prefix, sys.executable, "-m", "gsi.cli", "--root", str(root), "--listen",
         f"unix://{sock}", "--no-fsync", "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening on "):
        proc.kill()
        proc.wait()
        raise AssertionError(f"the receiver did not start: {line!r}")
    return proc, line.removeprefix("listening on ").strip()


async def abandon_copies(hosts: AsyncExitStack, url: str, data: bytes,
                         names: Sequence[str]) -> None:
    """One open copy per name into /d, each past the 1 MiB write buffer (data on disk);
    the hosts stay connected (so the copies stay open) until ``hosts`` closes."""
    with trio.fail_after(20):
        for name in names:
            host = await hosts.enter_async_context(
                FaultyHost(url, window=8, answer_timeout=10))
            report = await host.copy(data, "/d", name=name, force=True,
                                     plan=[parse_fault("abandon:at=300")])
            assert report.outcome == "abandoned", report
            assert all(a.status == 0 for a in report.answers)
            assert host.connected


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


async def test_sigkill_with_unnamed_temps_leaves_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "keep.bin").write_bytes(OLD)
    data = random.Random(7).randbytes(4 << 20)
    before = snapshot(root)
    proc, url = start_receiver(root, tmp_path / "one.sock")
    try:
        async with AsyncExitStack() as hosts:
            await abandon_copies(hosts, url, data, ["keep.bin", "new.bin"])
            sizes = open_temps(root / "d", proc.pid)
            assert len(sizes) == 2 and all(size > 512 << 10 for size in sizes), sizes
            assert snapshot(root) == before  # the data exists, under no name at all
            kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert snapshot(root) == before  # nothing to sweep
    with guest_process(root) as guest:
        assert snapshot(root) == before
        source = tmp_path / "source"
        source.write_bytes(data)
        with trio.fail_after(20):
            for name in ("keep.bin", "new.bin"):
                await copy_vm_file(guest.url, source, "/d", name=name, force=True, window=16)
    assert content(root / "d" / "keep.bin") == data
    assert content(root / "d" / "new.bin") == data


@contextmanager
def lock_held_by_another_process(lock: Path) -> Iterator[None]:
    """A live receiver's instance lock: a real process holds the flock."""
    script = ("import fcntl, os, sys\n"
              "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
              "fcntl.flock(fd, fcntl.LOCK_EX)\n"
              "print('locked', flush=True)\n"
              "sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", script, str(lock)], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdin is not None
    try:
        assert holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.stdin.close()
        holder.wait(10)


async def test_sigkill_with_named_temps_then_restart(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "keep.bin").write_bytes(OLD)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"a symlink's target, outside the root\n")
    data = random.Random(7).randbytes(4 << 20)

    proc, url = start_receiver(root, tmp_path / "one.sock", "--temp-files", "named")
    try:
        async with AsyncExitStack() as hosts:
            await abandon_copies(hosts, url, data, ["keep.bin", "new.bin"])
            locks = sorted(p.name for p in root.glob(".gsi-instance-*.lock"))
            assert len(locks) == 1
            dead = locks[0].removeprefix(".gsi-instance-").removesuffix(".lock")
            stale = sorted(p.name for p in (root / "d").glob(f".gsi-{dead}-*.part"))
            assert len(stale) == 2
            assert all((root / "d" / n).stat().st_size > 512 << 10 for n in stale)
            kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The dead receiver left its temp files and lock file; the targets are as they were.
    assert content(root / "d" / "keep.bin") == OLD
    assert not (root / "d" / "new.bin").exists()
    assert sorted(p.name for p in (root / "d").glob(".gsi-*.part")) == stale

    # Things the sweep must never touch, next to the stale temps and deeper down.
    live, unknown = "1111111111111111", "2222222222222222"
    (root / "d" / "sub").mkdir()
    decoys = {
        f"d/.gsi-{live}-0123456789abcdef.part": "a live instance's temp",
        f"d/sub/.gsi-{live}-fedcba9876543210.part": "a live instance's temp",
        f"d/.gsi-{unknown}-0123456789abcdef.part": "committed by someone: no lock file",
        f"d/.gsi-{dead}-0123456789ABCDEF.part": "upper-case hex",
        f"d/.gsi-{dead}-0123456789abcde.part": "15 hex digits",
        f"d/.gsi-{dead}-0123456789abcdef.part.bak": "a suffix",
        f"d/x.gsi-{dead}-0123456789abcdef.part": "a prefix",
        "d/report.part": "an ordinary name",
    }
    for rel, why in decoys.items():
        (root / rel).write_text(why)
    (root / f"d/.gsi-{dead}-aaaaaaaaaaaaaaaa.part").symlink_to(outside)
    (root / f"d/sub/.gsi-{dead}-bbbbbbbbbbbbbbbb.part").mkdir()
    (root / f"d/sub/.gsi-{dead}-cccccccccccccccc.part").write_text("stale, deeper down")
    outside_before = outside.read_bytes()

    with lock_held_by_another_process(root / f".gsi-instance-{live}.lock"):
        before = snapshot(root)
        with guest_process(root) as guest:  # logs at INFO; a different pid
            # The receiver cleans up before it announces that it listens.
            after = snapshot(root)
            removed = sorted(set(before) - set(after))
            assert removed == sorted([f"d/{n}" for n in stale]
                                     + [f"d/sub/.gsi-{dead}-cccccccccccccccc.part",
                                        f".gsi-instance-{dead}.lock"])
            assert all(after[rel] == before[rel] for rel in after)
            assert outside.read_bytes() == outside_before
            log = guest.log()
            for rel in removed[:-1]:
                assert rel in log or rel.startswith(".gsi-instance"), log
            # A host cannot commit a name reserved for temp and lock files.
            async with FaultyHost(guest.url, answer_timeout=10) as host:
                for name in (f".gsi-{dead}-0123456789abcdef.part", f".gsi-instance-{dead}.lock"):
                    report = await host.copy(b"x", "/d", name=name)
                    assert report.outcome == "refused", report
                    assert report.answers[-1].status == 0x80070005
            # And the restarted receiver serves: the interrupted copies now go through.
            source = tmp_path / "source"
            source.write_bytes(data)
            with trio.fail_after(20):
                for name in ("keep.bin", "new.bin"):
                    await copy_vm_file(guest.url, source, "/d", name=name, force=True,
                                       window=16)
    assert content(root / "d" / "keep.bin") == data
    assert content(root / "d" / "new.bin") == data


def namespace_pid(proc: subprocess.Popen[str]) -> tuple[int, int]:
    """(pid here, pid in its own pid namespace) of the receiver ``unshare`` forked."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
    return int(children[0]), int(nspid.split()[-1])


async def test_restart_as_the_same_pid(tmp_path: Path) -> None:
    """pid 1 in a container: the dead receiver's pid is the live restarted one's."""
    if subprocess.run([*UNSHARE, "true"], capture_output=True).returncode != 0:
        pytest.skip("cannot make a pid namespace here (unshare --pid needs root)")
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    data = random.Random(8).randbytes(2 << 20)
    proc, url = start_receiver(root, tmp_path / "one.sock", "--temp-files", "named",
                               prefix=UNSHARE)
    try:
        child, first_pid = namespace_pid(proc)
        async with AsyncExitStack() as hosts:
            await abandon_copies(hosts, url, data, ["new.bin"])
            assert len(list((root / "d").glob(".gsi-*.part"))) == 1
            os.kill(child, signal.SIGKILL)
            proc.wait(timeout=10)  # unshare exits once its child is dead
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert len(list((root / "d").glob(".gsi-*.part"))) == 1
    proc, url = start_receiver(root, tmp_path / "two.sock", "--temp-files", "named",
                               prefix=UNSHARE)
    try:
        child, pid = namespace_pid(proc)
        assert pid == first_pid == 1
        assert list((root / "d").glob(".gsi-*.part")) == []  # swept before listening
        assert [p.name for p in root.iterdir() if p.name.startswith(".gsi-")] == []
        os.kill(child, signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
