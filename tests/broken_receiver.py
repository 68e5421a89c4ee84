"""A receiver that breaks exactly one rule, for the conformance checker's tests.

It is the real receiver (``gsi.server.Receiver``) with one part swapped for a subclass
that gets one thing wrong; everything else behaves as ``gsi-receiver`` does.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gsi.constants import CopyFlags, IcMsgType, Status
from gsi.events import CancelCopy, CompleteCopy, Rejected, RequestEvent
from gsi.protocol import GuestConnection
from gsi.server import Receiver, ReceiverConfig
from gsi.sink import FileSink, OpenCopy
from gsi.transports import listener_url, open_listeners


class UnknownTypeFails(GuestConnection):
    """Answers an unknown IC message type with 0x80004005 instead of 0x80070032."""

    def answer_into(self, out: bytearray, event: RequestEvent, status: int | None = None,
                    ) -> None:
        start = len(out)
        super().answer_into(out, event, status)
        if isinstance(event, Rejected) and event.icmsgtype != IcMsgType.FCOPY:
            out[start + 20:start + 24] = int(Status.E_FAIL).to_bytes(4, "little")


class ResponseFlagOnly(GuestConnection):
    """Answers with icflags 0x04 (RESPONSE) instead of 0x05 (TRANSACTION|RESPONSE)."""

    def answer_into(self, out: bytearray, event: RequestEvent, status: int | None = None,
                    ) -> None:
        start = len(out)
        super().answer_into(out, event, status)
        out[start + 25] = 0x04


class CancelFails(GuestConnection):
    """Answers CANCEL with 0x80004005, as the Linux UIO daemon does."""

    def answer_into(self, out: bytearray, event: RequestEvent, status: int | None = None,
                    ) -> None:
        if isinstance(event, CancelCopy):
            status = Status.E_FAIL
        super().answer_into(out, event, status)


class NoCoverageCheck(GuestConnection):
    """Takes COMPLETE without checking that the WRITEs covered the file (a hole commits)."""

    def _complete(self, payload: bytes, tid: int) -> None:
        if not self.copy_open:
            super()._complete(payload, tid)
            return
        self._queue.append(CompleteCopy(transaction_id=tid, request=payload,
                                        file_size=self._file_size))


class FollowsDotDot(FileSink):
    """Resolves ``..`` instead of refusing it, even above the root (into its parent)."""

    def begin(self, path_name: str, file_name: str, flags: CopyFlags,
              file_size: int) -> OpenCopy:
        if ".." not in path_name.split("/"):
            return super().begin(path_name, file_name, flags, file_size)
        root = Path(self.root)
        joined = posixpath.normpath(posixpath.join("/", root.name, path_name.lstrip("/")))
        outer = FileSink(root.parent, fsync=False)
        return outer.begin(joined, file_name, flags, file_size)


CONNECTIONS: dict[str, type[GuestConnection]] = {
    "unknown-type-fails": UnknownTypeFails,
    "response-flag-only": ResponseFlagOnly,
    "cancel-fails": CancelFails,
    "no-coverage-check": NoCoverageCheck,
}
class OverwritesWithoutFlag(FileSink):
    """Replaces an existing target even without OVER_WRITE."""

    def begin(self, path_name: str, file_name: str, flags: CopyFlags,
              file_size: int) -> OpenCopy:
        return super().begin(path_name, file_name, flags | CopyFlags.OVER_WRITE, file_size)


SINKS: dict[str, Callable[..., FileSink]] = {"follows-dotdot": FollowsDotDot,
                                             "overwrites-without-flag": OverwritesWithoutFlag}
VIOLATIONS = (*CONNECTIONS, *SINKS)


class BrokenReceiver(Receiver):
    def __init__(self, config: ReceiverConfig, violation: str) -> None:
        super().__init__(config)
        self.violation = violation
        if violation in SINKS:
            self.sink.close()
            self.sink = SINKS[violation](config.root, fsync=False,
                                         linux_create_path=config.linux_create_path)

    def _new_connection(self) -> GuestConnection:
        good = super()._new_connection()
        kind = CONNECTIONS.get(self.violation)
        if kind is None:
            return good
        c = self.config
        return kind(max_fragment=c.max_fragment, max_file_size=c.max_file_size,
                    linux_status_codes=c.linux_status_codes)


@asynccontextmanager
async def broken_guest(violation: str, **config: Any) -> AsyncIterator[tuple[str, Path]]:
    """A receiver breaking ``violation`` on a Unix socket: (url, root). The root sits in a
    private temporary directory, so whatever lands beside it is this test's."""
    with tempfile.TemporaryDirectory(prefix="gsi-broken-", dir="/tmp") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        listeners = await open_listeners(f"unix://{Path(tmp) / 'g.sock'}")
        receiver = BrokenReceiver(ReceiverConfig(root=root, fsync=False, **config), violation)
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, listeners)
            try:
                yield listener_url(listeners[0]), root
            finally:
                nursery.cancel_scope.cancel()


def outside_entries(root: Path) -> list[str]:
    """Entries beside ``root`` in its private parent (anything but the root and socket)."""
    return sorted(set(os.listdir(root.parent)) - {root.name, "g.sock"})
