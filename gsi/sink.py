"""FileSink: the only code that touches the destination filesystem.

Theory of operation: :meth:`FileSink.begin` resolves the guest path under the destination
root (see :mod:`gsi.paths`: ``..`` refused, symlinks followed only inside the root, every
step fd-relative with ``O_NOFOLLOW``), checks the target entry and the free space, and
creates a temp file *in the target directory*. :class:`OpenCopy` writes the data there
(``pwrite``, contiguous fragments coalesced), and :meth:`OpenCopy.commit` makes it the
target in one step: ``rename`` over the target with OVER_WRITE, otherwise ``link`` (which
fails with EEXIST rather than clobber) then ``unlink`` of the temp. Until then the target
and its old content are untouched; every failure, :meth:`OpenCopy.abort` included, removes
the temp file. Everything here is synchronous and blocking (run it in a worker thread).

Temp files are named ``.gsi-<pid>-<16 lowercase hex digits>.part`` (:data:`TEMP_NAME_RE`),
``<pid>`` being the receiver's process id in decimal, so that
:meth:`FileSink.cleanup_stale_temps` can remove those left behind by a receiver that died.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Sequence
from typing import Final

from .constants import CopyFlags, Status
from .errors import SinkError
from .paths import (
    check_file_name,
    check_target,
    describe_oserror,
    guest_path,
    open_directory,
    sink_error_from,
    split_path_name,
)

__all__ = ["TEMP_NAME_FORMAT", "TEMP_NAME_RE", "FileSink", "OpenCopy"]

log = logging.getLogger(__name__)

TEMP_NAME_FORMAT: Final = ".gsi-{pid}-{token}.part"
"""Temp file name: ``pid`` in decimal, ``token`` 16 lowercase hex digits (64 random bits)."""

TEMP_NAME_RE: Final = re.compile(r"\.gsi-(?P<pid>[1-9][0-9]{0,9})-[0-9a-f]{16}\.part")
"""Matches (with ``fullmatch``) exactly the names :data:`TEMP_NAME_FORMAT` produces."""

_TEMP_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_TEMP_ATTEMPTS: Final = 8
_IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _pid_is_dead(pid: int) -> bool:
    """True only if no process with this pid exists (as seen from this pid namespace)."""
    try:
        os.kill(pid, 0)  # PermissionError: it exists, owned by someone else
    except (ProcessLookupError, OverflowError):  # Overflow: beyond any pid handed out
        return True
    except PermissionError:
        return False
    return False


class OpenCopy:
    """One file being received into a temp file; made by :meth:`FileSink.begin`.

    Attributes:
        target: the guest-visible path, for logs (``/a/b/file.txt``).
        file_size: the size announced at START.
        bytes_written: data bytes accepted by :meth:`write` (overlaps counted again).
        flushes: batches written to the file (one ``pwrite`` loop each), for tests.
        temp_name: the temp file's name in the target directory.
    """

    def __init__(
        self,
        *,
        dir_fd: int,
        file_name: str,
        target: str,
        flags: CopyFlags,
        file_size: int,
        fsync: bool,
        file_mode: int | None,
        preallocate: bool,
        coalesce_bytes: int,
    ) -> None:
        """Create the temp file in ``dir_fd`` (consumed: closed on failure and by the copy).

        Raises:
            SinkError: the temp file cannot be created or preallocated (nothing is left).
        """
        self.target = target
        self.file_size = file_size
        self.bytes_written = 0
        self.flushes = 0
        self._dir_fd: int | None = dir_fd
        self._file_name = file_name
        self._overwrite = bool(flags & CopyFlags.OVER_WRITE)
        self._fsync = fsync
        self._capacity = max(0, min(coalesce_bytes, file_size))  # no write goes beyond
        self._buf = bytearray()  # allocated at the first write that is gathered
        self._fill = 0
        self._buf_start = 0
        self._fd: int | None = None
        self.temp_name = ""
        try:
            self._create_temp(file_mode)
            if preallocate and file_size > 0:
                assert self._fd is not None
                try:
                    os.posix_fallocate(self._fd, 0, file_size)
                except OSError as exc:
                    if exc.errno != errno.EOPNOTSUPP:
                        doing = f"preallocating {file_size} bytes for {target}"
                        raise sink_error_from(exc, doing) from None
        except BaseException:
            self.abort()
            raise

    def _create_temp(self, file_mode: int | None) -> None:
        assert self._dir_fd is not None
        for _ in range(_TEMP_ATTEMPTS):
            name = TEMP_NAME_FORMAT.format(pid=os.getpid(), token=secrets.token_hex(8))
            try:
                self._fd = os.open(name, _TEMP_FLAGS, 0o644, dir_fd=self._dir_fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise sink_error_from(exc, f"creating a temp file for {self.target}") from None
            self.temp_name = name
            break
        else:
            raise SinkError(Status.E_FAIL, f"no free temp file name for {self.target}")
        if file_mode is not None:
            try:
                os.fchmod(self._fd, file_mode)
            except OSError as exc:
                raise sink_error_from(exc, f"setting mode {file_mode:o} on {self.target}") from None

    @property
    def is_open(self) -> bool:
        """False once committed or aborted (or after a failure)."""
        return self._fd is not None

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset``; may buffer (contiguous fragments are coalesced).

        The result is the same as applying every write in order with ``pwrite``, whatever
        the order, overlap or duplication. ``data`` is copied or written before this
        returns, so the caller may reuse its buffer.

        Raises:
            SinkError: DISK_FULL on ENOSPC/EDQUOT, E_FAIL on any other OSError (the reason
                names the errno) or if the copy is no longer open, INVALIDARG for a range
                outside ``[0, file_size)``. The copy is aborted (temp removed) first.
        """
        view = memoryview(data).cast("B")
        size = len(view)
        fd = self._check_write(offset, size)
        fill = self._fill
        capacity = self._capacity
        try:
            if fill and (offset != self._buf_start + fill or fill + size > capacity):
                self._flush(fd)
                fill = 0
            if not size:
                pass
            elif size >= capacity:
                self._pwrite_all(fd, view, offset)
                self.flushes += 1
            else:
                if not fill:
                    self._buf_start = offset
                    if not self._buf:
                        self._buf = bytearray(capacity)
                end = fill + size
                self._buf[fill:end] = view
                self._fill = end
                if end >= capacity:
                    self._flush(fd)
        except OSError as exc:
            self.abort()
            raise sink_error_from(exc, f"writing {self.target}") from None
        self.bytes_written += size

    def writev(self, offset: int, buffers: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write the concatenation of ``buffers`` at ``offset`` (one contiguous run).

        Same result and errors as :meth:`write` with the joined bytes, but never
        gathered: the run goes to the file before this returns, with ``pwritev`` straight
        from the caller's buffers (no copy).
        """
        views = [memoryview(data).cast("B") for data in buffers]
        size = sum(len(view) for view in views)
        fd = self._check_write(offset, size)
        try:
            self._flush(fd)  # gathered data first: the result is as if written in order
            self._pwritev_all(fd, views, offset)
        except OSError as exc:
            self.abort()
            raise sink_error_from(exc, f"writing {self.target}") from None
        self.flushes += 1
        self.bytes_written += size

    def _check_write(self, offset: int, size: int) -> int:
        """The fd to write ``size`` bytes at ``offset`` to, or SinkError (copy aborted)."""
        fd = self._fd
        if fd is None:
            fd = self._require_open("write to")  # raises
        if offset < 0 or offset + size > self.file_size:
            self.abort()
            raise SinkError(
                Status.INVALIDARG,
                f"write of {size} bytes at offset {offset} is outside the {self.file_size}"
                f" bytes of {self.target}",
            )
        return fd

    def _flush(self, fd: int) -> None:
        if self._fill:
            self._pwrite_all(fd, memoryview(self._buf)[: self._fill], self._buf_start)
            self._fill = 0
            self.flushes += 1

    @staticmethod
    def _pwritev_all(fd: int, views: list[memoryview], offset: int) -> None:
        """``pwritev`` until every byte is written (partial writes resumed, at most
        IOV_MAX buffers per call)."""
        start = 0
        while start < len(views):
            batch = views[start:start + _IOV_MAX]
            written = os.pwritev(fd, batch, offset)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            offset += written
            for view in batch:  # skip what was written; resume inside a partial buffer
                if written < len(view):
                    views[start] = view[written:]
                    break
                written -= len(view)
                start += 1

    @staticmethod
    def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            written = os.pwrite(fd, view[done:], offset + done)
            if written <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += written

    def commit(self) -> None:
        """Make the temp file the target: flush, fsync, check size, then rename or link.

        With OVER_WRITE the temp is renamed over the target (replacing the entry itself,
        so a symlink target is replaced, never written through). Without it the temp is
        hard-linked to the target name, which fails rather than clobber an entry that
        appeared since :meth:`FileSink.begin`, then unlinked. With ``fsync`` the file is
        fsynced before and the directory after.

        Raises:
            SinkError: ALREADY_EXISTS if the target appeared meanwhile (without OVER_WRITE),
                E_FAIL if the temp file's size is not ``file_size`` or the copy is no longer
                open, otherwise per the OSError. The temp is removed and the target is
                untouched, except when only the final directory fsync fails (E_FAIL): the
                target is then already in place but may not be durable.
        """
        fd = self._require_open("commit")
        dir_fd = self._dir_fd
        assert dir_fd is not None
        try:
            self._flush(fd)
            if self._fsync:
                os.fsync(fd)
            size = os.fstat(fd).st_size
        except OSError as exc:
            self.abort()
            raise sink_error_from(exc, f"finishing {self.target}") from None
        if size != self.file_size:
            self.abort()
            why = f"{self.target} got {size} bytes, not the announced {self.file_size}"
            raise SinkError(Status.E_FAIL, why + "; nothing committed")
        self._close_file()
        try:
            if self._overwrite:
                os.rename(self.temp_name, self._file_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            else:
                os.link(
                    self.temp_name,
                    self._file_name,
                    src_dir_fd=dir_fd,
                    dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
        except OSError as exc:
            self.abort()
            raise self._commit_error(exc) from None
        if not self._overwrite:
            try:
                os.unlink(self.temp_name, dir_fd=dir_fd)
            except OSError as exc:  # the target is in place; only a spare link remains
                why = describe_oserror(exc)
                log.warning(
                    "committed %s; temp %s not removed: %s", self.target, self.temp_name, why
                )
        self.temp_name = ""
        try:
            if self._fsync:
                os.fsync(dir_fd)
        except OSError as exc:
            raise SinkError(
                Status.E_FAIL,
                f"{self.target} is in place but fsync of its directory failed:"
                f" {describe_oserror(exc)}",
            ) from None
        finally:
            self._close_dir()

    def _commit_error(self, exc: OSError) -> SinkError:
        if exc.errno == errno.EEXIST:
            return SinkError(
                Status.ALREADY_EXISTS,
                f"target {self.target} appeared during the copy (OVER_WRITE not set);"
                " it was left untouched",
            )
        if exc.errno in (errno.EISDIR, errno.ENOTEMPTY):
            why = f"target {self.target} became a directory during the copy"
            return SinkError(Status.ACCESS_DENIED, why)
        return sink_error_from(exc, f"committing {self.target}")

    def abort(self) -> None:
        """Close and remove the temp file; the target is untouched. Idempotent, never raises."""
        self._close_file()
        if self.temp_name and self._dir_fd is not None:
            try:
                os.unlink(self.temp_name, dir_fd=self._dir_fd)
            except FileNotFoundError:  # already gone: nothing to do
                pass
            except OSError as exc:
                why = describe_oserror(exc)
                log.warning("temp %s of %s not removed: %s", self.temp_name, self.target, why)
        self.temp_name = ""
        self._fill = 0
        self._close_dir()

    def _require_open(self, what: str) -> int:
        if self._fd is None:
            raise SinkError(Status.E_FAIL, f"cannot {what} {self.target}: the copy is not open")
        return self._fd

    def _close_file(self) -> None:
        fd, self._fd = self._fd, None
        _close_quietly(fd)

    def _close_dir(self) -> None:
        fd, self._dir_fd = self._dir_fd, None
        _close_quietly(fd)

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<OpenCopy {self.target!r} {state} {self.bytes_written}/{self.file_size}>"


class FileSink:
    """Receives files under a destination root.

    Args:
        root: the destination root; must exist and be a directory. An ``O_DIRECTORY`` fd
            on it is held until :meth:`close` (also a context manager).
        fsync: fsync each file and its directory at commit.
        file_mode: None creates files with mode 0o644 less the umask; otherwise each file
            is fchmod-ed to exactly this mode.
        dir_mode: mode of directories created for CREATE_PATH (the umask applies).
        preallocate: ``posix_fallocate`` the temp file to ``file_size`` at begin.
        check_free_space: refuse at begin (DISK_FULL) a ``file_size`` larger than the free
            space (``f_bavail * f_frsize``) of the target's filesystem.
        coalesce_bytes: contiguous writes are gathered up to this many bytes per
            ``pwrite``; 0 writes every fragment at once.
        linux_create_path: CREATE_PATH as the Linux daemons do it: the last component
            of ``path_name`` is created only when ``path_name`` ends in "/" (by
            default every missing component is created).

    Raises:
        SinkError: PATH_NOT_FOUND if ``root`` does not exist or is not a directory,
            ACCESS_DENIED if it cannot be opened for lack of permission.
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
    ) -> None:
        self.root = os.fspath(root)
        self.linux_create_path = linux_create_path
        self.fsync = fsync
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.preallocate = preallocate
        self.check_free_space = check_free_space
        self.coalesce_bytes = coalesce_bytes
        try:
            self._root_fd: int | None = os.open(self.root, _ROOT_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            raise SinkError(
                Status.PATH_NOT_FOUND,
                f"destination root {self.root!r} does not exist or is not a directory",
            ) from None
        except OSError as exc:
            raise sink_error_from(exc, f"opening destination root {self.root!r}") from None
        self.root_real = os.path.realpath(self.root)

    def begin(self, path_name: str, file_name: str, flags: CopyFlags, file_size: int) -> OpenCopy:
        """Start receiving ``path_name/file_name``: resolve, check, create the temp file.

        Directories missing for CREATE_PATH are created (after the free-space check).

        Raises:
            SinkError: with the status PROTOCOL.md section 8 gives: ACCESS_DENIED (``..``,
                symlink outside the root, directory target with OVER_WRITE, permissions),
                PATH_NOT_FOUND (missing directory without CREATE_PATH, dangling symlink,
                non-directory on the way), ALREADY_EXISTS (target exists without
                OVER_WRITE), DISK_FULL (``file_size`` above the free space), INVALIDARG
                (bad names, negative ``file_size``), else E_FAIL. No temp file remains.
            ValueError: the sink is closed.
        """
        root_fd = self._require_root()
        flags = CopyFlags(flags)
        parts = split_path_name(path_name)
        check_file_name(file_name)
        target = guest_path(parts, file_name)
        if file_size < 0:
            raise SinkError(Status.INVALIDARG, f"negative file size {file_size} for {target}")
        space_checked = False

        def before_mkdir(fd: int) -> None:
            nonlocal space_checked
            self._check_space(fd, file_size, target)
            space_checked = True

        create = bool(flags & CopyFlags.CREATE_PATH)
        if create and self.linux_create_path and parts and not path_name.endswith("/"):
            # Linux creates only the components a "/" follows; the last must exist.
            os.close(open_directory(root_fd, self.root_real, parts[:-1], create=True,
                                    dir_mode=self.dir_mode, before_mkdir=before_mkdir))
            create = False
        dir_fd = open_directory(
            root_fd,
            self.root_real,
            parts,
            create=create,
            dir_mode=self.dir_mode,
            before_mkdir=before_mkdir,
        )
        try:
            check_target(dir_fd, file_name, flags, target)
            if not space_checked:
                self._check_space(dir_fd, file_size, target)
        except BaseException:
            os.close(dir_fd)
            raise
        return OpenCopy(
            dir_fd=dir_fd,
            file_name=file_name,
            target=target,
            flags=flags,
            file_size=file_size,
            fsync=self.fsync,
            file_mode=self.file_mode,
            preallocate=self.preallocate,
            coalesce_bytes=self.coalesce_bytes,
        )

    def _check_space(self, fd: int, file_size: int, target: str) -> None:
        if not self.check_free_space or file_size == 0:
            return
        try:
            st = os.fstatvfs(fd)
        except OSError as exc:
            raise sink_error_from(exc, f"checking free space for {target}") from None
        free = st.f_bavail * st.f_frsize
        if file_size > free:
            raise SinkError(
                Status.DISK_FULL,
                f"{target} needs {file_size} bytes but only {free} are free there",
            )

    def cleanup_stale_temps(self) -> list[str]:
        """Remove temp files left by receivers that died; never anything else.

        Walks the whole root without following symlinks and removes regular files whose
        name fully matches :data:`TEMP_NAME_RE` and whose pid names no live process. A
        receiver in another pid namespace sharing the root looks dead: don't share roots
        across containers while this runs.

        Returns:
            The removed files' paths relative to the root, sorted.

        Raises:
            ValueError: the sink is closed.
        """
        root_fd = self._require_root()
        removed: list[str] = []
        for dirpath, _dirnames, filenames, dir_fd in os.fwalk(
            ".", dir_fd=root_fd, follow_symlinks=False
        ):
            for name in filenames:
                match = TEMP_NAME_RE.fullmatch(name)
                if match is None or not _pid_is_dead(int(match["pid"])):
                    continue
                rel = os.path.normpath(os.path.join(dirpath, name))
                try:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    os.unlink(name, dir_fd=dir_fd)
                except OSError as exc:
                    log.warning("could not remove stale temp %s: %s", rel, describe_oserror(exc))
                    continue
                log.info("removed stale temp file %s", rel)
                removed.append(rel)
        return sorted(removed)

    def _require_root(self) -> int:
        if self._root_fd is None:
            raise ValueError("the FileSink is closed")
        return self._root_fd

    def close(self) -> None:
        """Close the root fd. Idempotent. Open copies keep working until they end."""
        fd, self._root_fd = self._root_fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> FileSink:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FileSink root={self.root!r}{' closed' if self._root_fd is None else ''}>"
