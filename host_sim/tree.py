"""Copying directory trees: what ``Copy-VMFile`` cannot do, over one connection.

:func:`plan_tree` walks the sources (blocking: a worker thread runs it in async code) and
decides everything before a byte is sent: each regular file's guest directory and name
(``SRC_DIR``'s base name becomes the top directory under the destination, like
``cp -r``), the directories that will not exist in the guest (the protocol creates a
directory only on the way to a file), the symlinks and other entries skipped. Names that
do not fit the 260-unit UTF-16 fields are refused there, all at once.
:func:`send_tree` then copies the files one after another, each with CREATE_PATH.

Symlinks: a source named on the command line is followed; symlinks found inside a tree
are skipped (and reported) unless ``follow_symlinks``, which follows them except into a
directory that is already on the way (a loop) and except broken ones.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gsi.constants import DATA_FRAGMENT, HOST_FCOPY_VERSIONS, HOST_FRAMEWORK_VERSIONS, Version
from gsi.errors import CopyFailed, GsiError, InvalidNameError
from gsi.names import encode_name

from .client import HostClient, open_host

TreeProgress = Callable[[int, int], None]
"""Called with (files done, bytes acknowledged so far, over the whole tree)."""

MAX_REPORTED = 10
"""Refused names listed in one error (the rest are counted)."""


class TreeError(GsiError):
    """The sources cannot be copied as asked (nothing was sent)."""


@dataclass(frozen=True, slots=True)
class TreeFile:
    source: Path
    path_name: str
    file_name: str
    size: int


@dataclass(slots=True)
class TreePlan:
    """Everything a tree copy will do, decided before it starts.

    Attributes:
        files: the regular files, in copy order.
        empty_dirs: guest paths of source directories with no file below them.
        symlinks: skipped symlinks, as "local path (why)".
        special: skipped entries that are not regular files or directories.
    """

    files: list[TreeFile] = field(default_factory=list)
    empty_dirs: list[str] = field(default_factory=list)
    symlinks: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def skipped_lines(self) -> list[str]:
        return ([f"skipped empty directory (the protocol cannot create one): {d}"
                 for d in self.empty_dirs]
                + [f"skipped symlink: {s}" for s in self.symlinks]
                + [f"skipped non-regular file: {s}" for s in self.special])


@dataclass(frozen=True, slots=True)
class TreeResult:
    files: int
    bytes: int
    seconds: float
    empty_dirs: int
    symlinks: int
    special: int

    def __str__(self) -> str:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return (f"{self.files} files, {self.bytes} bytes copied in {self.seconds:.3f} s "
                f"({rate:.1f} MB/s); skipped: {self.empty_dirs} empty directories, "
                f"{self.symlinks} symlinks, {self.special} other non-regular files")


def _guest_dir(dest_dir: str, rel: str) -> str:
    if not rel:
        return dest_dir
    return f"{dest_dir.rstrip('/')}/{rel}" if dest_dir.rstrip("/") else f"/{rel}"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return name
    return "not a regular file"


class _Walker:
    def __init__(self, dest_dir: str, follow_symlinks: bool) -> None:
        self.dest_dir = dest_dir
        self.follow = follow_symlinks
        self.plan = TreePlan()

    def source(self, src: Path) -> None:
        try:
            st = src.stat()
        except OSError as exc:
            raise TreeError(f"{src}: {exc.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            self.plan.files.append(TreeFile(src, self.dest_dir, src.name, st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            top = os.path.basename(os.path.normpath(os.path.abspath(src)))
            if not top:
                raise TreeError(f"{src}: the file system root has no name to copy it under")
            self.directory(src, top, frozenset({(st.st_dev, st.st_ino)}))
        else:
            raise TreeError(f"{src} is a {_kind(st.st_mode)}, not a file or directory")

    def directory(self, path: Path, rel: str, ancestors: frozenset[tuple[int, int]]) -> int:
        """Plan one directory; the number of files planned below it."""
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise TreeError(f"{path}: {exc.strerror}") from None
        count = 0
        for entry in entries:
            child = Path(entry.path)
            try:
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    if not self.follow:
                        self.plan.symlinks.append(f"{child} (use --follow-symlinks)")
                        continue
                    try:
                        st = child.stat()
                    except OSError:
                        self.plan.symlinks.append(f"{child} (broken)")
                        continue
                    if (st.st_dev, st.st_ino) in ancestors:
                        self.plan.symlinks.append(f"{child} (a loop: it leads to a "
                                                  "directory on its own path)")
                        continue
            except OSError as exc:
                raise TreeError(f"{child}: {exc.strerror}") from None
            if stat.S_ISDIR(st.st_mode):
                count += self.directory(child, f"{rel}/{entry.name}",
                                        ancestors | {(st.st_dev, st.st_ino)})
            elif stat.S_ISREG(st.st_mode):
                self.plan.files.append(TreeFile(child, _guest_dir(self.dest_dir, rel),
                                                entry.name, st.st_size))
                count += 1
            else:
                self.plan.special.append(f"{child} ({_kind(st.st_mode)})")
        if count == 0:
            self.plan.empty_dirs.append(_guest_dir(self.dest_dir, rel))
        return count


def _check_names(plan: TreePlan) -> None:
    problems = []
    seen: dict[tuple[str, str], Path] = {}
    for f in plan.files:
        for what, name in (("file name", f.file_name), ("guest directory", f.path_name)):
            try:
                encode_name(name)
            except InvalidNameError as exc:
                problems.append(f"{f.source}: {what} {name!r}: {exc}")
        other = seen.setdefault((f.path_name, f.file_name), f.source)
        if other != f.source:
            problems.append(f"{f.source} and {other} would both be "
                            f"{_guest_dir(f.path_name, f.file_name)}")
    if problems:
        more = len(problems) - MAX_REPORTED
        raise TreeError("cannot send these names, nothing was copied:\n  "
                        + "\n  ".join(problems[:MAX_REPORTED])
                        + (f"\n  ... and {more} more" if more > 0 else ""))


def plan_tree(sources: Sequence[str | os.PathLike[str]], dest_dir: str, *,
              follow_symlinks: bool = False) -> TreePlan:
    """Walk the sources and plan the copy (blocking).

    Raises:
        TreeError: a source is missing or not a file/directory, a directory cannot be
            read, a name cannot be sent (over 259 UTF-16 units in the guest directory or
            the file name, or not valid Unicode), or two files would land on one path.
    """
    walker = _Walker(dest_dir, follow_symlinks)
    for src in sources:
        walker.source(Path(src))
    _check_names(walker.plan)
    return walker.plan


async def send_tree(host: HostClient, plan: TreePlan, *, force: bool = False,
                    window: int = 1, progress: TreeProgress | None = None) -> TreeResult:
    """Copy every planned file over ``host``'s channel, each with CREATE_PATH.

    Raises:
        CopyFailed: a copy was refused (the message names the file and how many were
            copied before it).
    """
    done_bytes = 0
    started = time.perf_counter()
    for number, f in enumerate(plan.files):
        callback = None
        if progress is not None:
            def callback(acked: int, _size: int, base: int = done_bytes,
                         number: int = number) -> None:
                progress(number, base + acked)
        try:
            result = await host.copy_file(f.source, f.path_name, name=f.file_name,
                                          create_full_path=True, force=force, window=window,
                                          progress=callback)
        except CopyFailed as exc:
            raise CopyFailed(f"copy of {f.source} failed after {number} of "
                             f"{len(plan.files)} files: {exc}", status=exc.status) from exc
        done_bytes += result.size
        if progress is not None:
            progress(number + 1, done_bytes)
    return TreeResult(files=len(plan.files), bytes=done_bytes,
                      seconds=time.perf_counter() - started, empty_dirs=len(plan.empty_dirs),
                      symlinks=len(plan.symlinks), special=len(plan.special))


async def copy_tree(
    url: str, sources: Sequence[str | os.PathLike[str]], dest_dir: str, *,
    follow_symlinks: bool = False, force: bool = False, fragment_size: int = DATA_FRAGMENT,
    window: int = 1, full_write_body: bool = True, progress: TreeProgress | None = None,
    native: bool | None = None,
    framework_versions: tuple[Version, ...] = HOST_FRAMEWORK_VERSIONS,
    message_versions: tuple[Version, ...] = HOST_FCOPY_VERSIONS,
) -> tuple[TreePlan, TreeResult]:
    """Copy whole trees into ``dest_dir`` over one connection (``cp -r`` semantics).

    The plan (what was skipped and why) comes back with the result.

    Raises:
        TreeError: the copy cannot start (see :func:`plan_tree`); nothing was sent.
        CopyFailed: the guest refused a file.
    """
    plan = await trio.to_thread.run_sync(functools.partial(
        plan_tree, sources, dest_dir, follow_symlinks=follow_symlinks))
    async with open_host(url, fragment_size=fragment_size, full_write_body=full_write_body,
                         native=native) as host:
        await host.negotiate(framework_versions, message_versions)
        result = await send_tree(host, plan, force=force, window=window, progress=progress)
    return plan, result
