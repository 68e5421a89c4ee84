"""FileSink: the only code that touches the destination filesystem.

Theory of operation: :meth:`FileSink.begin` checks every name (before anything is created),
resolves the guest path under the destination root (see :mod:`gsi.paths`: ``..`` refused,
symlinks followed only inside the root, every step fd-relative with ``O_NOFOLLOW``),
checks the target entry and the free space (:mod:`gsi.space`: what other open copies
declared counts), and hands the open target directory to an :class:`OpenCopy`
(:mod:`gsi.open_copy`), which creates a temp file there (:mod:`gsi.temps`: unnamed with
``O_TMPFILE`` where the filesystem allows, else named), writes the data to it and commits
it in one step, or removes it. Everything here is synchronous and blocking: every call
may wait on the disk, so the session makes them in worker threads.

Named temp files embed the token of the receiver's instance lock (:mod:`gsi.sweep`), so
that :meth:`FileSink.cleanup_stale_temps` removes exactly those of receivers that died.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import threading
from typing import Final

from .begin import MAX_FILE_SIZE, DestinationRules, name_max, open_destination
from .constants import CopyFlags, Status
from .errors import SinkError
from .open_copy import OpenCopy
from .paths import sink_error_from
from .space import SpaceLedger
from .sweep import InstanceLock, sweep_stale_temps
from .temps import TEMP_NAME_FORMAT, TEMP_NAME_RE, TempPolicy, check_unnamed

__all__ = ["MAX_FILE_SIZE", "TEMP_FILE_MODES", "TEMP_NAME_FORMAT", "TEMP_NAME_RE",
           "FileSink", "OpenCopy"]

log = logging.getLogger(__name__)

TEMP_FILE_MODES: Final = ("auto", "named")
"""``temp_files`` values: unnamed temps where possible, or always named ones."""


@functools.cache
def _root_flags() -> int:
    return os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


class FileSink:
    """Receives files under a destination root.

    Args:
        root: the destination root; must exist and be a directory. An ``O_DIRECTORY`` fd
            on it is held until :meth:`close` (also a context manager).
        fsync: fsync each file and its directory at commit.
        file_mode: None creates files with mode 0o644 less the umask; otherwise each file
            is fchmod-ed to exactly this mode.
        dir_mode: mode of directories created for CREATE_PATH (the umask applies).
        preallocate: ``posix_fallocate`` the temp file to ``file_size`` at begin; implies
            the free-space check.
        check_free_space: refuse at begin (DISK_FULL) a ``file_size`` larger than the free
            space (``f_bavail * f_frsize``) of the target's filesystem less the sizes other
            open copies there declared (see :mod:`gsi.space`).
        coalesce_bytes: contiguous writes are gathered up to this many bytes per
            ``pwrite``; 0 writes every fragment at once.
        linux_create_path: CREATE_PATH as the Linux daemons do it: the last component
            of ``path_name`` is created only when ``path_name`` ends in "/" (by
            default every missing component is created).
        temp_files: "auto": unnamed temp files (``O_TMPFILE``) where the filesystem has
            them and they can be committed (see :meth:`check_temp_files`), named ones
            elsewhere; "named": always named ones (see :mod:`gsi.temps`).

    Raises:
        SinkError: PATH_NOT_FOUND if ``root`` does not exist or is not a directory,
            ACCESS_DENIED if it cannot be opened for lack of permission.
        ValueError: an unknown ``temp_files``.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fsync: bool = True,
        file_mode: int | None = None,
        dir_mode: int = 0o755,
        preallocate: bool = False,
        check_free_space: bool = True,
        coalesce_bytes: int = 1 << 20,
        linux_create_path: bool = False,
        temp_files: str = "auto",
    ) -> None:
        if temp_files not in TEMP_FILE_MODES:
            raise ValueError(f"temp_files must be one of {TEMP_FILE_MODES}, not {temp_files!r}")
        self.root = os.fspath(root)
        self.linux_create_path = linux_create_path
        self.fsync = fsync
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.preallocate = preallocate
        self.check_free_space = check_free_space
        self.coalesce_bytes = coalesce_bytes
        self.temp_files = temp_files
        try:
            self._root_fd: int | None = os.open(self.root, _root_flags())
        except (FileNotFoundError, NotADirectoryError):
            raise SinkError(
                Status.PATH_NOT_FOUND,
                f"destination root {self.root!r} does not exist or is not a directory",
            ) from None
        except OSError as exc:
            raise sink_error_from(exc, f"opening destination root {self.root!r}") from None
        self.root_real = os.path.realpath(self.root)
        self._rules = DestinationRules(
            root_real=self.root_real, name_max=name_max(self._root_fd), dir_mode=dir_mode,
            linux_create_path=linux_create_path, declare_space=check_free_space or preallocate)
        self._instance = InstanceLock()
        self._space = SpaceLedger()
        self._temps_lock = threading.Lock()
        self._temps_checked = False
        self._temps = TempPolicy(
            unnamed=temp_files == "auto",
            instance=lambda: self._instance.acquire(self._require_root()),
            token=lambda: self._instance.token,
        )

    def begin(self, path_name: str, file_name: str, flags: CopyFlags, file_size: int) -> OpenCopy:
        """Start receiving ``path_name/file_name``: check, resolve, create the temp file.

        Every name is checked (length, encoding, reserved names) before anything is
        created; directories missing for CREATE_PATH are created after the free-space
        check.

        Raises:
            SinkError: with the status PROTOCOL.md section 8 gives: ACCESS_DENIED (``..``,
                symlink outside the root, directory target with OVER_WRITE, permissions,
                a file name reserved for the receiver's temp and lock files),
                PATH_NOT_FOUND (missing directory without CREATE_PATH, dangling symlink,
                non-directory on the way), ALREADY_EXISTS (target exists without
                OVER_WRITE), DISK_FULL (``file_size`` above the free space less what other
                open copies declared), INVALIDARG (bad or too long names, ``file_size``
                negative or above :data:`MAX_FILE_SIZE`), else E_FAIL: any failure,
                expected or not, becomes a SinkError with its reason. No temp file remains.
            ValueError: the sink is closed.
        """
        root_fd = self._require_root()
        if not self._temps_checked:
            self.check_temp_files()
        try:
            return self._begin(root_fd, path_name, file_name, CopyFlags(flags), file_size)
        except SinkError:
            raise
        except OSError as exc:
            raise sink_error_from(exc, f"starting {path_name!r} / {file_name!r}") from None
        except Exception as exc:
            raise SinkError(
                Status.E_FAIL,
                f"starting {path_name!r} / {file_name!r} failed: {type(exc).__name__}: {exc}",
            ) from None

    def _begin(self, root_fd: int, path_name: str, file_name: str, flags: CopyFlags,
               file_size: int) -> OpenCopy:
        where = open_destination(root_fd, self._rules, self._space, path_name, file_name,
                                 flags, file_size)
        return OpenCopy(
            dir_fd=where.dir_fd,
            file_name=file_name,
            target=where.target,
            flags=flags,
            file_size=file_size,
            fsync=self.fsync,
            file_mode=self.file_mode,
            preallocate=self.preallocate,
            coalesce_bytes=self.coalesce_bytes,
            temps=self._temps,
            guard=where.guard,
            release=where.release,
        )

    @property
    def unnamed_temps(self) -> bool:
        """Whether copies try unnamed temp files first (after :meth:`check_temp_files`)."""
        return self._temps.unnamed

    def check_temp_files(self) -> None:
        """Check once that unnamed temp files can be committed in the root; else use named.

        With ``temp_files="auto"`` an ``O_TMPFILE`` file is linked through ``/proc/self/fd``
        to a fresh temp name in the root and removed (:func:`gsi.temps.check_unnamed`). If
        that fails (no ``/proc``, a tmpfs over it, a sandbox hiding it), every copy uses named
        temp files from then on, and one warning says why. Blocking (run it in a worker
        thread); the receiver calls it before it accepts connections, and the first
        :meth:`begin` does if nobody did. Later calls return at once.

        Raises:
            ValueError: the sink is closed.
        """
        with self._temps_lock:
            if self._temps_checked:
                return
            root_fd = self._require_root()
            why = check_unnamed(root_fd, self._instance.token) if self._temps.unnamed else None
            if why is not None:
                log.warning("unnamed temp files (O_TMPFILE) cannot be committed here: %s;"
                            " using named temp files (.gsi-*.part) instead", why)
                self._temps = dataclasses.replace(self._temps, unnamed=False)
            self._temps_checked = True

    def declared_space(self, path: str | os.PathLike[str] | None = None) -> int:
        """Bytes open copies have declared on the filesystem of ``path`` (default: root)."""
        return self._space.held(os.stat(path if path is not None else self.root).st_dev)

    def cleanup_stale_temps(self) -> list[str]:
        """Remove named temp files left by receivers that died; never anything else.

        A temp is removed only if it is a regular file whose name fully matches
        :data:`TEMP_NAME_RE` and whose instance lock file (in the root) exists and is held
        by no process (see :mod:`gsi.sweep`). Walks without following symlinks.

        Returns:
            The removed files' paths relative to the root, sorted.

        Raises:
            ValueError: the sink is closed.
        """
        return sweep_stale_temps(self._require_root())

    def _require_root(self) -> int:
        if self._root_fd is None:
            raise ValueError("the FileSink is closed")
        return self._root_fd

    def close(self) -> None:
        """Drop the instance lock and close the root fd. Idempotent. Open copies keep
        working until they end."""
        self._instance.release(self._root_fd)
        fd, self._root_fd = self._root_fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FileSink root={self.root!r}{' closed' if self._root_fd is None else ''}>"

