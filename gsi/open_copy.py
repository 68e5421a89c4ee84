"""OpenCopy: one file being received into a temp file, until it is committed or aborted.

Theory of operation: :meth:`gsi.sink.FileSink.begin` resolves and checks the destination,
then makes an :class:`OpenCopy`, which creates the temp file *in the target directory*
(:mod:`gsi.temps`: unnamed with ``O_TMPFILE`` where the filesystem allows, else named).
The copy writes the data there (``pwrite``, contiguous fragments coalesced; runs of
fragments with ``pwritev`` straight from the caller's buffers), and :meth:`OpenCopy.commit`
makes it the target in one step, after checking that its directory is still reached from
the root by the same path: a link that fails with EEXIST rather than clobber, or with
OVER_WRITE a rename over the target. Until then the target and its old content are
untouched; every failure, :meth:`OpenCopy.abort` included, removes the temp file.
Everything here is synchronous and blocking: every call may wait on the disk, so the
session makes them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence
from typing import Final

from .constants import CopyFlags, Status
from .errors import SinkError
from .paths import DirGuard, describe_oserror, sink_error_from
from .temps import Temp, TempPolicy, commit_temp, create_temp, remove_temp

__all__ = ["OpenCopy"]

_IOV_MAX: Final = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _close_quietly(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


class OpenCopy:
    """One file being received into a temp file; made by :meth:`gsi.sink.FileSink.begin`.

    Attributes:
        target: the guest-visible path, for logs (``/a/b/file.txt``).
        file_size: the size announced at START.
        bytes_written: data bytes accepted by :meth:`write` (overlaps counted again).
        flushes: batches written to the file (one ``pwrite`` loop each), for tests.
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
        temps: TempPolicy,
        guard: DirGuard | None = None,
        release: Callable[[], None] | None = None,
    ) -> None:
        """Create the temp file in ``dir_fd`` (consumed: closed on failure and by the copy).

        ``guard`` (consumed too) checks the directory again at commit; ``release`` is called
        once when the copy ends (or its space is preallocated).

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
        self._temp: Temp | None = None
        self._temps = temps
        self._guard = guard
        self._release = release
        try:
            self._create_temp(file_mode)
            if preallocate and file_size > 0:
                self._preallocate()
        except BaseException:
            self.abort()
            raise

    def _create_temp(self, file_mode: int | None) -> None:
        assert self._dir_fd is not None
        self._temp = create_temp(self._dir_fd, self._temps, self.target)
        self._fd = self._temp.fd
        if file_mode is not None:
            try:
                os.fchmod(self._fd, file_mode)
            except OSError as exc:
                raise sink_error_from(exc, f"setting mode {file_mode:o} on {self.target}") from None

    def _preallocate(self) -> None:
        assert self._fd is not None
        try:
            os.posix_fallocate(self._fd, 0, self.file_size)
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:
                doing = f"preallocating {self.file_size} bytes for {self.target}"
                raise sink_error_from(exc, doing) from None
            return
        self._end_reservation()  # the filesystem's free space now accounts for it

    @property
    def temp_name(self) -> str:
        """The temp file's name in the target directory; "" while it has none (unnamed)."""
        return self._temp.name if self._temp is not None else ""

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
        size = sum(map(len, buffers))  # byte buffers: len() is the size in bytes
        fd = self._check_write(offset, size)
        try:
            self._flush(fd)  # gathered data first: the result is as if written in order
            if len(buffers) > _IOV_MAX or os.pwritev(fd, buffers, offset) != size:
                # Not all in one call (the usual case, with nothing to look at per
                # buffer): again from the start, resuming partial writes. Positional
                # writes of the same bytes: what the first call wrote is rewritten as is.
                self._pwritev_all(fd, [memoryview(b).cast("B") for b in buffers], offset)
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
        """Make the temp file the target: flush, fsync, check size and place, then link.

        The target directory must still be reached from the root by the path walked at
        :meth:`gsi.sink.FileSink.begin` (same device and inode). Without OVER_WRITE the temp is
        linked to the target name, which fails rather than clobber an entry that appeared
        since :meth:`~gsi.sink.FileSink.begin`. With OVER_WRITE it replaces the entry itself (so a
        symlink target is replaced, never written through). A named temp must still be
        this file. With ``fsync`` the file is fsynced before and the directory after.

        Raises:
            SinkError: ALREADY_EXISTS if the target appeared meanwhile (without OVER_WRITE),
                ACCESS_DENIED if the directory left the root or a named temp was replaced,
                E_FAIL if the temp file's size is not ``file_size`` or the copy is no longer
                open, otherwise per the OSError. The temp is removed and the target is
                untouched, except when only the final directory fsync fails (E_FAIL): the
                target is then already in place but may not be durable.
        """
        fd = self._require_open("commit")
        self._finish(fd)
        dir_fd, temp = self._dir_fd, self._temp
        assert dir_fd is not None and temp is not None
        try:
            if self._guard is not None:
                self._guard.check(dir_fd, self.target)
            commit_temp(temp, dir_fd, self._file_name, overwrite=self._overwrite,
                        policy=self._temps, target=self.target)
        except SinkError:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise self._commit_error(exc) from None
        except Exception as exc:
            self.abort()
            why = f"committing {self.target} failed: {type(exc).__name__}: {exc}"
            raise SinkError(Status.E_FAIL, why) from None
        self._temp = self._fd = None
        _close_quietly(fd)
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
            self._end()

    def _finish(self, fd: int) -> None:
        """Flush, fsync and check the size; aborts and raises SinkError on failure."""
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
        temp, self._temp = self._temp, None
        self._fd = None
        if temp is not None:
            if self._dir_fd is None:
                _close_quietly(temp.fd)
            else:
                remove_temp(temp, self._dir_fd, self.target)
        self._fill = 0
        self._end()

    def _require_open(self, what: str) -> int:
        if self._fd is None:
            raise SinkError(Status.E_FAIL, f"cannot {what} {self.target}: the copy is not open")
        return self._fd

    def _end_reservation(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def _end(self) -> None:
        """Release what the copy holds besides its temp: space, directory, root fd."""
        self._end_reservation()
        fd, self._dir_fd = self._dir_fd, None
        _close_quietly(fd)
        if self._guard is not None:
            self._guard.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<OpenCopy {self.target!r} {state} {self.bytes_written}/{self.file_size}>"
