"""Guest path resolution under a destination root: the security-critical half of the sink.

Theory of operation: a guest path is ``path_name + "/" + file_name`` taken literally,
component by component, under the destination ROOT (``/a/b`` and ``a/b`` both land at
``ROOT/a/b``). The walk starts from an ``O_DIRECTORY`` fd on ROOT and opens each component
with ``O_NOFOLLOW`` relative to the previous fd, so a symlink can never be followed
unchecked, not even one swapped in between a check and its use. A symlink met on the way is
resolved with ``os.path.realpath``; if the result stays inside ``realpath(ROOT)`` the walk
restarts from the root fd along the resolved components, which are themselves walked with
``O_NOFOLLOW`` (so every symlink is checked, at most :data:`MAX_SYMLINK_FOLLOWS` times).
Nothing here writes a file; with CREATE_PATH it only creates directories.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from .constants import CopyFlags, Status
from .errors import SinkError

MAX_SYMLINK_FOLLOWS: Final = 40
"""Symlinks followed while resolving one path before giving up (ACCESS_DENIED), as ELOOP."""

_MAX_RACE_RETRIES: Final = 16


@functools.cache
def dir_flags() -> int:
    """``os.open`` flags for a directory on the walk: read-only, directory, no follow.

    Read on first use, not at import: these flags are POSIX only, and the modules that
    import this one must load where they are missing (``host_sim`` on a Windows host).
    """
    return os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def oserror_status(exc: OSError) -> Status:
    """The HRESULT a failed filesystem call answers with.

    EACCES, EPERM and EROFS give ACCESS_DENIED; ENOSPC and EDQUOT give DISK_FULL;
    ENAMETOOLONG gives INVALIDARG; anything else E_FAIL.
    """
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Status.ACCESS_DENIED
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Status.DISK_FULL
    if exc.errno == errno.ENAMETOOLONG:
        return Status.INVALIDARG
    return Status.E_FAIL


def describe_oserror(exc: OSError) -> str:
    """``ENOSPC (No space left on device)`` for an OSError."""
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name} ({os.strerror(exc.errno)})"


def sink_error_from(exc: OSError, doing: str) -> SinkError:
    """A SinkError for ``exc``; ``doing`` says what failed and where (``creating '/a/b'``)."""
    return SinkError(oserror_status(exc), f"{doing} failed: {describe_oserror(exc)}")


def split_path_name(path_name: str) -> list[str]:
    """Split ``path_name`` into the directory components to walk.

    ``/`` separates components; empty and ``.`` components are skipped.

    Raises:
        SinkError: ACCESS_DENIED for a ``..`` component anywhere; INVALIDARG for a NUL.
    """
    if "\x00" in path_name:
        raise SinkError(Status.INVALIDARG, f"path name {path_name!r} contains a NUL character")
    parts = [part for part in path_name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise SinkError(
            Status.ACCESS_DENIED,
            f"path name {path_name!r} contains a '..' component, which is never allowed",
        )
    return parts


def check_file_name(file_name: str) -> None:
    """Check that ``file_name`` names one entry.

    Raises:
        SinkError: ACCESS_DENIED for ``.`` or ``..``; INVALIDARG if it is empty or
            contains ``/`` or NUL.
    """
    if file_name in (".", ".."):
        raise SinkError(Status.ACCESS_DENIED, f"file name {file_name!r} is not allowed")
    if not file_name or "/" in file_name or "\x00" in file_name:
        raise SinkError(
            Status.INVALIDARG, f"file name {file_name!r} is empty or contains '/' or NUL"
        )


def guest_path(parts: Sequence[str], file_name: str | None = None) -> str:
    """The guest-visible absolute path of ``parts`` (plus ``file_name``), for logs."""
    names = [*parts, file_name] if file_name is not None else list(parts)
    return "/" + "/".join(names)


def _inside(path: str, root_real: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip("/") + "/")


def _open_dir_at(name: str, dir_fd: int) -> int:
    """``openat(dir_fd, name, O_DIRECTORY | O_NOFOLLOW)``: one step of every walk here."""
    return os.open(name, dir_flags(), dir_fd=dir_fd)


def walk_directory(
    root_fd: int,
    root_real: str,
    parts: Sequence[str],
    *,
    create: bool,
    dir_mode: int = 0o755,
    before_mkdir: Callable[[int], None] | None = None,
) -> tuple[int, list[str]]:
    """Open the directory ``ROOT/parts`` without ever leaving ROOT.

    Args:
        root_fd: an ``O_DIRECTORY`` fd on ROOT (not consumed).
        root_real: ``os.path.realpath(ROOT)``.
        parts: components from :func:`split_path_name`.
        create: CREATE_PATH: create every missing requested component (``os.mkdir`` with
            ``dir_mode``, umask applies; EEXIST races tolerated). Components that come from
            a symlink's target are never created (the link is dangling).
        dir_mode: mode of created directories.
        before_mkdir: called with the parent fd before the first directory is created, so
            a caller can refuse (raise) before anything exists.

    Returns:
        A new ``O_DIRECTORY`` fd the caller must close, and the components that reach it
        from ROOT with no symlink among them (what :func:`verify_directory` walks again).

    Raises:
        SinkError: PATH_NOT_FOUND for a missing component without ``create``, a dangling
            symlink or one that vanishes while it is resolved, or a component that is not
            a directory; ACCESS_DENIED for a symlink leading outside ROOT, more than
            :data:`MAX_SYMLINK_FOLLOWS` symlinks, or a permission error; other statuses
            per :func:`oserror_status`.
    """
    walk = _DirectoryWalk(root_fd, root_real, parts, create, dir_mode, before_mkdir)
    try:
        while walk.pending:
            walk.step()
        return walk.fd, walk.here
    except BaseException:
        os.close(walk.fd)
        raise


class _DirectoryWalk:
    """The state of one :func:`walk_directory` call: ``fd`` is ``ROOT/here``."""

    def __init__(self, root_fd: int, root_real: str, parts: Sequence[str], create: bool,
                 dir_mode: int, before_mkdir: Callable[[int], None] | None) -> None:
        self.root_fd = root_fd
        self.root_real = root_real
        self.create = create
        self.dir_mode = dir_mode
        self.before_mkdir = before_mkdir
        # Each pending entry: (name, requested). requested=False marks a component that
        # came from resolving a symlink: it must exist (never created).
        self.pending: deque[tuple[str, bool]] = deque((part, True) for part in parts)
        self.here: list[str] = []  # components of fd under ROOT; never contains a symlink
        self.follows = self.retries = 0
        self.fd = os.dup(root_fd)

    def step(self) -> None:
        """Handle the next pending component: descend, create, follow, or retry it."""
        name, requested = self.pending.popleft()
        where = guest_path([*self.here, name])
        try:
            next_fd = _open_dir_at(name, self.fd)
        except FileNotFoundError:
            self._missing(name, requested, where)
        except OSError as exc:
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise sink_error_from(exc, f"opening directory {where}") from None
            if self._not_a_directory(name, where):
                return  # a symlink, followed: the walk restarted from the root
        else:
            os.close(self.fd)
            self.fd = next_fd
            self.here.append(name)
            self.retries = 0
            return
        # Just created, or changed under us (created or removed concurrently): look again.
        self.retries += 1
        if self.retries > _MAX_RACE_RETRIES:
            raise SinkError(Status.E_FAIL, f"{where} keeps changing while being opened")
        self.pending.appendleft((name, requested))

    def _missing(self, name: str, requested: bool, where: str) -> None:
        if not requested:
            raise SinkError(
                Status.PATH_NOT_FOUND,
                f"{where} does not exist: a symlink on the way is dangling",
            )
        if not self.create:
            raise SinkError(
                Status.PATH_NOT_FOUND,
                f"directory {where} does not exist (CREATE_PATH not set)",
            )
        if self.before_mkdir is not None:
            self.before_mkdir(self.fd)
            self.before_mkdir = None
        try:
            os.mkdir(name, self.dir_mode, dir_fd=self.fd)
        except FileExistsError:
            pass  # created concurrently: the retry sees what it is
        except OSError as exc:
            raise sink_error_from(exc, f"creating directory {where}") from None

    def _not_a_directory(self, name: str, where: str) -> bool:
        """``name`` is not a directory: follow it if it is a symlink (True), refuse it if
        it is something else, or return False if it vanished (retry)."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise sink_error_from(exc, f"examining {where}") from None
        if not stat.S_ISLNK(st.st_mode):
            raise SinkError(Status.PATH_NOT_FOUND, f"{where} exists but is not a directory")
        self.follows += 1
        if self.follows > MAX_SYMLINK_FOLLOWS:
            raise SinkError(
                Status.ACCESS_DENIED,
                f"more than {MAX_SYMLINK_FOLLOWS} symlinks followed at {where}"
                " (a symlink loop?)",
            )
        try:
            resolved = os.path.realpath(os.path.join(self.root_real, *self.here, name))
        except OSError as exc:  # a link on the way vanished or changed while resolved
            status = Status.PATH_NOT_FOUND if isinstance(
                exc, (FileNotFoundError, NotADirectoryError)) else oserror_status(exc)
            raise SinkError(
                status, f"symlink {where} changed while being resolved: {describe_oserror(exc)}"
            ) from None
        if not _inside(resolved, self.root_real):
            raise SinkError(
                Status.ACCESS_DENIED, f"symlink {where} leads outside the destination root"
            )
        rel = os.path.relpath(resolved, self.root_real)
        target_parts = [] if rel == "." else rel.split(os.sep)
        self.pending.extendleft((part, False) for part in reversed(target_parts))
        os.close(self.fd)
        self.fd = os.dup(self.root_fd)
        self.here = []
        return True


def verify_directory(root_fd: int, parts: Sequence[str], dir_fd: int, where: str) -> None:
    """Check that ``dir_fd`` still is ``ROOT/parts``, walking again from the root fd.

    Every step is opened with ``O_NOFOLLOW``; the directory reached must be ``dir_fd``'s
    (same device and inode). Called right before a commit, so that a directory moved out
    of the root (or replaced by a symlink) since the copy began is never committed into.

    Raises:
        SinkError: ACCESS_DENIED if the path no longer leads to ``dir_fd`` from the root.
    """
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                next_fd = _open_dir_at(name, fd)
            except OSError as exc:
                raise SinkError(
                    Status.ACCESS_DENIED,
                    f"the directory of {where} is no longer inside the destination root"
                    f" ({guest_path(parts)}: {describe_oserror(exc)}); nothing committed",
                ) from None
            os.close(fd)
            fd = next_fd
        got, want = os.fstat(fd), os.fstat(dir_fd)
    finally:
        os.close(fd)
    if (got.st_dev, got.st_ino) != (want.st_dev, want.st_ino):
        raise SinkError(
            Status.ACCESS_DENIED,
            f"the directory of {where} was moved or replaced since the copy began;"
            " nothing committed",
        )


def check_names(parts: Sequence[str], file_name: str, name_max: int) -> None:
    """Check every component and the file name before anything is created.

    Each must be encodable in UTF-8 (no lone surrogates) and at most ``name_max`` bytes
    long in it (the filesystem's ``NAME_MAX``).

    Raises:
        SinkError: INVALIDARG naming the first bad component.
    """
    for name in (*parts, file_name):
        try:
            size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise SinkError(
                Status.INVALIDARG, f"name {name!r} cannot be encoded in UTF-8"
            ) from None
        if size > name_max:
            raise SinkError(
                Status.INVALIDARG,
                f"name {name[:32]!r}... is {size} bytes in UTF-8; the filesystem allows"
                f" {name_max}",
            )


def check_target(dir_fd: int, file_name: str, flags: CopyFlags, where: str) -> None:
    """Check the target entry ``file_name`` in ``dir_fd`` before a copy starts.

    Absent is fine. A directory answers ALREADY_EXISTS without OVER_WRITE and
    ACCESS_DENIED with it. Any other entry (file, symlink, fifo, ...) answers
    ALREADY_EXISTS without OVER_WRITE and is allowed with it (the commit's rename then
    replaces the entry itself; nothing is ever written through a symlink).

    Raises:
        SinkError: as above, or per :func:`oserror_status` if the entry cannot be examined.
    """
    try:
        st = os.stat(file_name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise sink_error_from(exc, f"examining target {where}") from None
    overwrite = bool(flags & CopyFlags.OVER_WRITE)
    if stat.S_ISDIR(st.st_mode):
        if overwrite:
            raise SinkError(
                Status.ACCESS_DENIED, f"target {where} is a directory and cannot be overwritten"
            )
        raise SinkError(Status.ALREADY_EXISTS, f"target {where} exists (a directory)")
    if not overwrite:
        raise SinkError(Status.ALREADY_EXISTS, f"target {where} exists (OVER_WRITE not set)")


class DirGuard:
    """A copy's own way back to its directory from the root, for the check at commit.

    Holds a duplicate of the root fd (the sink may close its own before the copy ends) and
    the components :func:`walk_directory` returned.
    """

    def __init__(self, root_fd: int, parts: Sequence[str]) -> None:
        self.parts = list(parts)
        self._root_fd: int | None = os.dup(root_fd)

    def check(self, dir_fd: int, where: str) -> None:
        """:func:`verify_directory` from the root; SinkError ACCESS_DENIED if moved."""
        if self._root_fd is None:
            raise SinkError(Status.E_FAIL, f"cannot check the directory of {where}: closed")
        verify_directory(self._root_fd, self.parts, dir_fd, where)

    def close(self) -> None:
        """Close the root fd. Idempotent."""
        fd, self._root_fd = self._root_fd, None
        if fd is not None:
            os.close(fd)
