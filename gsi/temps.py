"""Temp files of copies in progress: created in the target directory, committed in one step.

Theory of operation: where the filesystem allows it the temp file has no name at all
(``O_TMPFILE``): nothing can collide with it, nobody can swap it, a crash leaves nothing
behind. It is committed by ``linkat`` through ``/proc/self/fd/N``, which fails with EEXIST
rather than clobber; for OVER_WRITE, when the target exists, it is linked to a fresh random
name first, then renamed over the target.

Linking through ``/proc`` needs a usable ``/proc`` (not there, a tmpfs over it, another
PID namespace's, a sandbox hiding it): :func:`check_unnamed` tries it once, before any copy,
and the sink uses named temps if it fails. Where ``O_TMPFILE`` is not available (EOPNOTSUPP,
EISDIR or EINVAL from ``open``), cannot be committed, or is not wanted
(``temp_files="named"``), the temp file is named
``.gsi-<instance>-<token>.part`` (:data:`TEMP_NAME_FORMAT`), ``<instance>`` being the
token of the receiver's instance lock (:mod:`gsi.sweep`). Before a named temp is committed
or removed, its name is checked to still be this file (device and inode, as ``fstat`` gave
them at creation): a file a local user put in its place is never committed, nor removed.

Renames over an existing entry use ``renameat2(RENAME_EXCHANGE)`` where the kernel and
filesystem have it: the swap is checked afterwards (the target must now be our file, the
old entry must not be a directory) and undone otherwise. Elsewhere plain ``rename``.
Everything here is synchronous and blocking (run it in a worker thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from .constants import Status
from .errors import SinkError
from .logsafe import escape
from .paths import describe_oserror, sink_error_from

__all__ = ["TEMP_NAME_FORMAT", "TEMP_NAME_RE", "Temp", "TempPolicy", "check_unnamed",
           "commit_temp", "create_temp", "remove_temp"]

log = logging.getLogger(__name__)

TEMP_NAME_FORMAT: Final = ".gsi-{instance}-{token}.part"
"""Named temp file: ``instance`` the receiver's instance token, ``token`` 16 random hex."""

TEMP_NAME_RE: Final = re.compile(r"\.gsi-(?P<instance>[0-9a-f]{16})-[0-9a-f]{16}\.part")
"""Matches (with ``fullmatch``) exactly the names :data:`TEMP_NAME_FORMAT` produces."""

_TEMP_ATTEMPTS: Final = 8
_RENAME_NOREPLACE: Final = 1
_RENAME_EXCHANGE: Final = 2
_NO_TMPFILE: Final = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_NO_RENAMEAT2: Final = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)
_NO_ROOM: Final = (errno.ENOSPC, errno.EDQUOT)
_PROC_FD: Final = "/proc/self/fd"
"""Where an unnamed temp's fd is reached by path, to ``linkat`` it into a directory."""


def _named_flags() -> int:
    return os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class TempPolicy:
    """How a sink makes temp files.

    Attributes:
        unnamed: try ``O_TMPFILE`` first.
        instance: returns the instance token for named temps, taking the instance lock
            on first use.
        token: returns the instance token without taking the lock (for the name an
            unnamed temp is linked to for a moment before it replaces a target).
    """

    unnamed: bool
    instance: Callable[[], str]
    token: Callable[[], str]


@dataclass(slots=True)
class Temp:
    """One temp file: ``fd`` open for writing, ``name`` in its directory ("" if unnamed),
    ``ident`` its (st_dev, st_ino)."""

    fd: int
    name: str
    ident: tuple[int, int]


def create_temp(dir_fd: int, policy: TempPolicy, target: str) -> Temp:
    """Create a temp file in ``dir_fd`` (mode 0o644 less the umask).

    Raises:
        SinkError: per the OSError, or E_FAIL if no free name was found.
    """
    fd = _open_unnamed(dir_fd, target) if policy.unnamed else None
    name = ""
    if fd is None:
        fd, name = _open_named(dir_fd, policy.instance(), target)
    try:
        st = os.fstat(fd)
    except OSError as exc:
        remove_temp(Temp(fd, name, (-1, -1)), dir_fd, target)
        raise SinkError(Status.E_FAIL, f"temp file for {target}: {describe_oserror(exc)}") from None
    return Temp(fd, name, (st.st_dev, st.st_ino))


def _open_unnamed(dir_fd: int, target: str) -> int | None:
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(".", os.O_WRONLY | flag | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NO_TMPFILE:
            return None
        raise _temp_error(exc, target) from None


def check_unnamed(dir_fd: int, instance: str) -> str | None:
    """Whether an unnamed temp made in ``dir_fd`` can be committed: one is created, linked
    through ``/proc/self/fd`` to a fresh temp name (:data:`TEMP_NAME_FORMAT`), removed.

    Returns:
        None if it can, or if the check cannot tell (no ``O_TMPFILE`` on this filesystem,
        the directory is not writable, no room for a name: copies meet that anyway);
        else why not, a phrase for the log.
    """
    try:
        fd = _open_unnamed(dir_fd, "the temp file check")
    except SinkError:
        return None
    if fd is None:
        return None if os.path.isdir(_PROC_FD) else f"{_PROC_FD} is not there"
    temp = Temp(fd, "", (-1, -1))
    try:
        st = os.fstat(fd)
        temp.ident = (st.st_dev, st.st_ino)
        temp.name = _link_fresh(fd, dir_fd, instance, "the temp file check")
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            return None
        return f"linking one through {_PROC_FD} failed: {describe_oserror(exc)}"
    except SinkError as exc:
        return exc.reason
    finally:
        remove_temp(temp, dir_fd, "the temp file check")
    return None


def _open_named(dir_fd: int, instance: str, target: str) -> tuple[int, str]:
    for _ in range(_TEMP_ATTEMPTS):
        name = TEMP_NAME_FORMAT.format(instance=instance, token=secrets.token_hex(8))
        try:
            return os.open(name, _named_flags(), 0o644, dir_fd=dir_fd), name
        except FileExistsError:
            continue
        except OSError as exc:
            raise _temp_error(exc, target) from None
    raise SinkError(Status.E_FAIL, f"no free temp file name for {target}")


def _temp_error(exc: OSError, target: str) -> SinkError:
    return sink_error_from(exc, f"creating a temp file for {target}")


def commit_temp(temp: Temp, dir_fd: int, file_name: str, *, overwrite: bool,
                policy: TempPolicy, target: str) -> None:
    """Make the temp file ``dir_fd/file_name`` in one step. ``temp.fd`` stays open.

    Raises:
        FileExistsError: the target exists and ``overwrite`` is false.
        SinkError: a named temp is no longer this file (replaced or removed by someone
            else): ACCESS_DENIED or E_FAIL, nothing committed.
        OSError: any other failure of link or rename; nothing committed.
    """
    if temp.name:
        _check_ours(dir_fd, temp.name, temp.ident, target)
        if overwrite:
            _replace(dir_fd, temp.name, file_name, temp.ident, target)
        else:
            _place_new(dir_fd, temp.name, file_name)
        temp.name = ""
        return
    try:
        os.link(f"{_PROC_FD}/{temp.fd}", file_name, dst_dir_fd=dir_fd, follow_symlinks=True)
        return
    except FileExistsError:
        if not overwrite:
            raise
    temp.name = _link_fresh(temp.fd, dir_fd, policy.token(), target)
    _replace(dir_fd, temp.name, file_name, temp.ident, target)
    temp.name = ""


def remove_temp(temp: Temp, dir_fd: int, target: str) -> None:
    """Close the temp file and remove its name if it still is this file. Never raises."""
    with contextlib.suppress(OSError):
        os.close(temp.fd)
    name, temp.name = temp.name, ""
    if not name:
        return
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (st.st_dev, st.st_ino) != temp.ident:
            log.warning("temp %s of %s not removed: it was replaced by someone else", name,
                        escape(target))
            return
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("temp %s of %s not removed: %s", name, escape(target),
                    describe_oserror(exc))


def _check_ours(dir_fd: int, name: str, ident: tuple[int, int], target: str) -> None:
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        raise SinkError(Status.E_FAIL, f"temp file {name} of {target} was removed by someone"
                        " else; nothing committed") from None
    if (st.st_dev, st.st_ino) != ident:
        raise SinkError(Status.ACCESS_DENIED, f"temp file {name} of {target} was replaced by"
                        " someone else; nothing committed")


def _place_new(dir_fd: int, src: str, dst: str) -> None:
    """``src`` becomes ``dst``, which must not exist (FileExistsError otherwise)."""
    if _renameat2(dir_fd, src, dst, _RENAME_NOREPLACE):
        return
    os.link(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    try:
        os.unlink(src, dir_fd=dir_fd)
    except OSError as exc:  # the target is in place; only a spare link remains
        log.warning("committed %s; temp %s not removed: %s", escape(dst), src,
                    describe_oserror(exc))


def _link_fresh(fd: int, dir_fd: int, instance: str, target: str) -> str:
    for _ in range(_TEMP_ATTEMPTS):
        name = TEMP_NAME_FORMAT.format(instance=instance, token=secrets.token_hex(8))
        try:
            os.link(f"{_PROC_FD}/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileExistsError:
            continue
        return name
    raise SinkError(Status.E_FAIL, f"no free temp file name for {target}")


def _replace(dir_fd: int, src: str, dst: str, ident: tuple[int, int], target: str) -> None:
    """``src`` (our file) replaces ``dst``: exchanged and checked, or renamed."""
    _check_ours(dir_fd, src, ident, target)
    try:
        exchanged = _renameat2(dir_fd, src, dst, _RENAME_EXCHANGE)
    except FileNotFoundError:  # no target (any more): a plain rename creates it
        exchanged = False
    if not exchanged:
        os.rename(src, dst, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:  # dst now is what src was, src what dst was
        _check_ours(dir_fd, dst, ident, target)
        if stat.S_ISDIR(os.stat(src, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), dst)
    except BaseException:
        _renameat2(dir_fd, src, dst, _RENAME_EXCHANGE)  # undo
        raise
    try:
        os.unlink(src, dir_fd=dir_fd)  # the replaced entry, now under our temp name
    except OSError as exc:
        log.warning("committed %s; the entry it replaced remains as %s: %s", escape(target),
                    src, describe_oserror(exc))


def _renameat2(dir_fd: int, src: str, dst: str, flags: int) -> bool:
    """``renameat2`` in ``dir_fd``; False where the kernel, libc or filesystem lacks it.

    Raises:
        OSError: any other failure (FileExistsError for RENAME_NOREPLACE, ...).
    """
    func = _libc_renameat2()
    if func is None:
        return False
    if func(dir_fd, os.fsencode(src), dir_fd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in _NO_RENAMEAT2:
        return False
    raise OSError(err, os.strerror(err), dst)


_renameat2_func: list[Callable[..., int] | None] = []


def _libc_renameat2() -> Callable[..., int] | None:
    if not _renameat2_func:
        func = None
        with contextlib.suppress(OSError, AttributeError, TypeError):
            func = ctypes.CDLL(None, use_errno=True).renameat2
            func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_uint]
            func.restype = ctypes.c_int
        _renameat2_func.append(func)
    return _renameat2_func[0]
