"""Run a real receiver inside your tests.

``open_guest()`` starts a receiver in-process on a temporary Unix socket with a
temporary destination root (or one you give) and yields a :class:`Guest`::

    from gsi.testing import open_guest
    from host_sim import copy_vm_file

    async def test_upload(tmp_path):
        async with open_guest() as guest:
            await copy_vm_file(guest.url, "report.pdf", "/data/", create_full_path=True)
            assert guest.path("/data/report.pdf").read_bytes() == ...

The receiver is the same code ``gsi-receiver`` runs, over a real socket; it stops
(aborting any open copy cleanly) when the block ends.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from .server import Receiver, ReceiverConfig, ReceiverStats
from .transports import listener_url, open_listeners


@dataclass(frozen=True, slots=True)
class Guest:
    """A running receiver.

    Attributes:
        url: where a host connects (``unix:///…``).
        root: the destination root; guest path ``/a/b`` is ``root / "a/b"``.
        receiver: the server object (its ``stats`` count copies).
    """

    url: str
    root: Path
    receiver: Receiver

    @property
    def stats(self) -> ReceiverStats:
        return self.receiver.stats

    def path(self, guest_path: str) -> Path:
        """Where a guest path lands on this machine."""
        return self.root.joinpath(*[p for p in guest_path.split("/") if p not in ("", ".")])


@asynccontextmanager
async def open_guest(root: str | Path | None = None, *, fsync: bool = False,
                     **config: Any) -> AsyncIterator[Guest]:
    """Start a receiver for the duration of the block.

    Args:
        root: destination root (default: a fresh temporary directory, removed after).
        fsync: fsync on COMPLETE (off by default: tests want speed, not durability).
        **config: any other :class:`gsi.server.ReceiverConfig` field, e.g.
            ``max_fragment=65536`` or ``idle_timeout=5``.
    """
    with tempfile.TemporaryDirectory(prefix="gsi-") as tmp:
        guest_root = Path(root) if root is not None else Path(tmp) / "root"
        guest_root.mkdir(exist_ok=True)
        listeners = await open_listeners(f"unix://{Path(tmp) / 'guest.sock'}")
        receiver = Receiver(ReceiverConfig(root=guest_root, fsync=fsync, **config))
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, listeners)
            try:
                yield Guest(url=listener_url(listeners[0]), root=guest_root,
                            receiver=receiver)
            finally:
                nursery.cancel_scope.cancel()
