"""The instance lock and the sweep of temp files left by a receiver that died.

Only named temp files can be left behind (unnamed ones vanish with their process). A
receiver that makes named temps first takes its instance lock: the file
``ROOT/.gsi-instance-<instance>.lock`` (:data:`LOCK_NAME_FORMAT`), ``flock``-ed for the
receiver's life, ``<instance>`` being 16 random hex digits that every temp name of that
receiver embeds (:data:`gsi.temps.TEMP_NAME_FORMAT`). The kernel drops the lock when the
process dies, whatever its pid, so pid reuse (pid 1 in a container) cannot keep a dead
receiver's temps alive.

:func:`sweep_stale_temps` removes a temp only if its instance's lock file exists in ROOT and
can be locked (``LOCK_EX | LOCK_NB``): the instance is dead. A file named like a temp with
no such lock file is never touched: the receiver did not create it. The receiver refuses
guest file names that match either pattern, so a host cannot plant both.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import stat
import threading
from typing import Final

from .logsafe import escape
from .paths import describe_oserror
from .temps import TEMP_NAME_RE

__all__ = ["LOCK_NAME_FORMAT", "LOCK_NAME_RE", "InstanceLock", "sweep_stale_temps"]

log = logging.getLogger(__name__)

LOCK_NAME_FORMAT: Final = ".gsi-instance-{instance}.lock"
LOCK_NAME_RE: Final = re.compile(r"\.gsi-instance-(?P<instance>[0-9a-f]{16})\.lock")
_LOCK_ATTEMPTS: Final = 8


def _flock(fd: int, *, wait: bool) -> bool:
    """flock LOCK_EX on ``fd``; False if another open file holds it (only without wait)."""
    import fcntl  # POSIX only: imported where used

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


class InstanceLock:
    """This receiver's instance token and, once :meth:`acquire`-d, its lock file in ROOT.

    Thread-safe; the lock file is created on first use only (a receiver that makes only
    unnamed temps never creates one).
    """

    def __init__(self) -> None:
        self.token = secrets.token_hex(8)
        self._fd: int | None = None
        self._mutex = threading.Lock()

    @property
    def name(self) -> str:
        return LOCK_NAME_FORMAT.format(instance=self.token)

    def acquire(self, root_fd: int) -> str:
        """Create and lock ``ROOT/.gsi-instance-<token>.lock`` if not yet; the token.

        Raises:
            OSError: the lock file cannot be created or locked.
        """
        with self._mutex:
            for _ in range(_LOCK_ATTEMPTS):
                if self._fd is not None:
                    return self.token
                self._fd = self._create(root_fd)
            raise OSError(f"no instance lock file could be kept in the root ({self.name})")

    def _create(self, root_fd: int) -> int | None:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.name, flags, 0o600, dir_fd=root_fd)
        except FileExistsError:
            self.token = secrets.token_hex(8)
            return None
        try:
            _flock(fd, wait=True)
            # A sweep may have taken it as stale between create and flock, and removed it.
            st, now = os.fstat(fd), os.stat(self.name, dir_fd=root_fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            self.token = secrets.token_hex(8)
            return None
        except BaseException:
            os.close(fd)
            raise
        if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
            os.close(fd)
            self.token = secrets.token_hex(8)
            return None
        return fd

    def release(self, root_fd: int | None) -> None:
        """Remove the lock file (if taken) and drop the lock. Idempotent, never raises."""
        with self._mutex:
            fd, self._fd = self._fd, None
            if fd is None:
                return
            if root_fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self.name, dir_fd=root_fd)
            with contextlib.suppress(OSError):
                os.close(fd)


def sweep_stale_temps(root_fd: int) -> list[str]:
    """Remove the temp files of dead instances, and their lock files; never anything else.

    Lock files are looked for in ROOT only; temps anywhere under it, walking without
    following symlinks. Only regular files are removed.

    Returns:
        The removed temp files' paths relative to the root, sorted.
    """
    stale = _stale_instances(root_fd)
    try:
        if not stale:
            return []
        removed = _remove_temps(root_fd, set(stale))
        for token, fd in stale.items():
            name = LOCK_NAME_FORMAT.format(instance=token)
            with contextlib.suppress(OSError):
                st, now = os.fstat(fd), os.stat(name, dir_fd=root_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                    os.unlink(name, dir_fd=root_fd)
        return sorted(removed)
    finally:
        for fd in stale.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def _stale_instances(root_fd: int) -> dict[str, int]:
    """Instance token -> a locked fd on its lock file, for every lock file nobody holds."""
    stale: dict[str, int] = {}
    with os.scandir(root_fd) as entries:
        names = [entry.name for entry in entries if LOCK_NAME_RE.fullmatch(entry.name)]
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        except OSError:
            continue  # a symlink (ELOOP), vanished, ...: not a lock file of ours
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode) and _flock(fd, wait=False):
                match = LOCK_NAME_RE.fullmatch(name)
                assert match is not None
                stale[match["instance"]] = fd
                continue
        except OSError:
            pass
        os.close(fd)
    return stale


def _remove_temps(root_fd: int, instances: set[str]) -> list[str]:
    removed: list[str] = []
    for dirpath, _dirnames, filenames, dir_fd in os.fwalk(
        ".", dir_fd=root_fd, follow_symlinks=False
    ):
        for name in filenames:
            match = TEMP_NAME_RE.fullmatch(name)
            if match is None or match["instance"] not in instances:
                continue
            rel = os.path.normpath(os.path.join(dirpath, name))
            try:
                if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                    continue
                os.unlink(name, dir_fd=dir_fd)
            except OSError as exc:
                log.warning("could not remove stale temp %s: %s", escape(rel),
                            describe_oserror(exc))
                continue
            log.info("removed stale temp file %s", escape(rel))
            removed.append(rel)
    return removed
