"""The first half of :meth:`gsi.sink.FileSink.begin`: from a START's names to an open
target directory, with nothing created for a request that is refused.

Order: names (``..``, NUL, reserved names, UTF-8 encoding and ``NAME_MAX`` of every
component) and ``file_size`` are checked first; then the directory is walked
(:func:`gsi.paths.walk_directory`), the free space is declared (:mod:`gsi.space`) before
the first directory is created, and the target entry is checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .constants import CopyFlags, Status
from .errors import SinkError
from .paths import (
    DirGuard,
    check_file_name,
    check_names,
    check_target,
    guest_path,
    split_path_name,
    walk_directory,
)
from .space import SpaceLedger
from .sweep import LOCK_NAME_RE
from .temps import TEMP_NAME_RE

__all__ = ["MAX_FILE_SIZE", "Destination", "DestinationRules", "name_max", "open_destination"]

MAX_FILE_SIZE: Final = (1 << 63) - 1
"""The largest file size (and file offset) a filesystem can hold."""

_DEFAULT_NAME_MAX: Final = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRules:
    """The sink's settings that :func:`open_destination` applies."""

    root_real: str
    name_max: int
    dir_mode: int
    linux_create_path: bool
    declare_space: bool


@dataclass(frozen=True, slots=True)
class Destination:
    """An open target directory: ``dir_fd`` (the caller's to close), the guest-visible
    ``target``, the ``guard`` that checks the directory again at commit, and ``release``,
    which ends the copy's space declaration (None if none was made)."""

    dir_fd: int
    target: str
    guard: DirGuard
    release: Callable[[], None] | None


def open_destination(root_fd: int, rules: DestinationRules, space: SpaceLedger,
                     path_name: str, file_name: str, flags: CopyFlags,
                     file_size: int) -> Destination:
    """Check the names and size, open the target directory, declare the space.

    Raises:
        SinkError: per :meth:`gsi.sink.FileSink.begin`; nothing is left declared or open.
    """
    parts = split_path_name(path_name)
    check_file_name(file_name)
    target = guest_path(parts, file_name)
    if TEMP_NAME_RE.fullmatch(file_name) or LOCK_NAME_RE.fullmatch(file_name):
        raise SinkError(Status.ACCESS_DENIED, f"{target}: the file name is reserved for"
                        " the receiver's own temp and lock files")
    check_names(parts, file_name, rules.name_max)
    if not 0 <= file_size <= MAX_FILE_SIZE:
        raise SinkError(Status.INVALIDARG, f"file size {file_size} of {target} is"
                        f" outside [0, {MAX_FILE_SIZE}]")
    releases: list[Callable[[], None]] = []

    def declare(fd: int) -> None:
        if not releases and rules.declare_space and file_size:
            releases.append(space.reserve(fd, file_size, target))

    try:
        dir_fd, walked = _open_target_dir(root_fd, rules, path_name, parts, flags, declare)
        try:
            check_target(dir_fd, file_name, flags, target)
            declare(dir_fd)
            guard = DirGuard(root_fd, walked)
        except BaseException:
            os.close(dir_fd)
            raise
    except BaseException:
        for release in releases:
            release()
        raise
    return Destination(dir_fd, target, guard, releases[0] if releases else None)


def _open_target_dir(root_fd: int, rules: DestinationRules, path_name: str,
                     parts: Sequence[str], flags: CopyFlags,
                     before_mkdir: Callable[[int], None]) -> tuple[int, list[str]]:
    create = bool(flags & CopyFlags.CREATE_PATH)
    if create and rules.linux_create_path and parts and not path_name.endswith("/"):
        # Linux creates only the components a "/" follows; the last must exist.
        fd, _ = walk_directory(root_fd, rules.root_real, parts[:-1], create=True,
                               dir_mode=rules.dir_mode, before_mkdir=before_mkdir)
        os.close(fd)
        create = False
    return walk_directory(root_fd, rules.root_real, parts, create=create,
                          dir_mode=rules.dir_mode, before_mkdir=before_mkdir)


def name_max(fd: int) -> int:
    """The filesystem's NAME_MAX (bytes per name) at ``fd``; 255 if it does not say."""
    try:
        value = os.fpathconf(fd, "PC_NAME_MAX")
    except (OSError, ValueError):
        return _DEFAULT_NAME_MAX
    return value if value > 0 else _DEFAULT_NAME_MAX
