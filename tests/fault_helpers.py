"""Helpers for the fault, invariant, load and corpus tests: filesystem snapshots, temp
file lookup, waiting for the receiver to drop its sessions, a receiver's memory figures."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from gsi.sink import TEMP_NAME_RE
from gsi.testing import Guest

Snapshot = dict[str, tuple[str, str]]


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str | int) -> Iterator[Path]:
    """A fresh tmpfs of ``size`` (``1m``, ``64m``) mounted on the existing directory
    ``mount_point`` (mode 0755), lazily unmounted afterwards (a failed test may still hold
    fds there). Skips the test where it cannot be mounted (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755",
                           "gsi-tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def snapshot(top: Path) -> Snapshot:
    """Every entry under ``top`` (not following symlinks): relative path -> (kind, what):
    a file's SHA-256, a symlink's target, "" for a directory or anything else."""
    entries: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            rel = str(path.relative_to(top))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISREG(st.st_mode):
                entries[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = ("dir", "")
            else:
                entries[rel] = ("other", "")
    return entries


def temp_files(root: Path) -> list[Path]:
    """The receiver's temp files anywhere under ``root``."""
    return sorted(p for p in root.rglob("*") if TEMP_NAME_RE.fullmatch(p.name))


async def sessions_gone(guest: Guest, keep: int = 0, timeout: float = 10.0) -> None:
    """Wait until the in-process receiver serves at most ``keep`` connections.

    The receiver ends a session when it sees the host's close; this waits for that
    event (polling its session count), failing after ``timeout``.
    """
    with trio.fail_after(timeout):
        while guest.receiver.active_connections > keep:
            await trio.sleep(0.005)


def proc_status_kib(pid: int, field: str) -> int:
    """A ``/proc/PID/status`` figure in KiB (``VmHWM`` = peak RSS, ``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def content(path: Path) -> bytes | None:
    """A file's bytes, or None if it does not exist."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
