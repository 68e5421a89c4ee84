"""Free-space accounting across open copies: :class:`SpaceLedger`.

The rule: a START is refused with DISK_FULL when its ``file_size`` exceeds the free space
of the target's filesystem (``f_bavail * f_frsize``) less what the other open copies on
that filesystem have declared and not yet preallocated. A copy's declared size counts in
full from START until it is committed or aborted (conservatively: data it has already
written is counted twice); a preallocated copy stops counting once ``posix_fallocate``
succeeded, since the filesystem's free space then accounts for it. So two STARTs can never
both be promised the same free bytes, and one START with a huge ``file_size`` is refused
instead of taking the space others were promised.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .constants import Status
from .errors import SinkError
from .paths import sink_error_from

__all__ = ["SpaceLedger"]


class SpaceLedger:
    """Bytes declared by open copies, per filesystem (``st_dev``). Thread-safe."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[int, int] = {}

    def held(self, dev: int) -> int:
        """Bytes currently declared on device ``dev``."""
        with self._mutex:
            return self._held.get(dev, 0)

    def reserve(self, fd: int, size: int, target: str) -> Callable[[], None]:
        """Check ``size`` against the free space of ``fd``'s filesystem less what is
        declared there, and declare it.

        Returns:
            A function that releases the declaration (idempotent).

        Raises:
            SinkError: DISK_FULL if it does not fit; per the OSError if the free space
                cannot be read.
        """
        try:
            dev = os.fstat(fd).st_dev
            vfs = os.fstatvfs(fd)
        except OSError as exc:
            raise sink_error_from(exc, f"checking free space for {target}") from None
        free = vfs.f_bavail * vfs.f_frsize
        with self._mutex:
            held = self._held.get(dev, 0)
            if size > free - held:
                raise SinkError(
                    Status.DISK_FULL,
                    f"{target} needs {size} bytes but only {free} are free there, of which"
                    f" {held} are declared by other open copies",
                )
            self._held[dev] = held + size
        done = False

        def release() -> None:
            nonlocal done
            with self._mutex:
                if done:
                    return
                done = True
                left = self._held[dev] - size
                if left:
                    self._held[dev] = left
                else:
                    del self._held[dev]

        return release
