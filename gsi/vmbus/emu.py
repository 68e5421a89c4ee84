"""An emulated vmbus channel: the ``/dev/uioN`` ring layout in a shared file, FIFOs for
interrupts. ``vmbus-emu:///PATH`` on both sides.

Files (the receiver creates them, removes them when it stops):

- ``PATH``: ``2 * ring_size`` bytes, exactly map 0 of the UIO device: the guest->host
  (TX) ring, then the host->guest (RX) ring, each a 4096-byte control page and data.
  A host learns the ring size from the file size, as the daemon does from sysfs.
- ``PATH.to-guest``: a FIFO; a byte in it is the host's interrupt. The receiver holds
  an exclusive ``flock`` on it while it lives: a host that can take a shared lock knows
  the receiver is gone.
- ``PATH.to-host``: a FIFO; a byte in it is the guest's signal. The attached host holds
  an exclusive ``flock`` on it: one host at a time, like the real channel.

Both sides open the FIFOs read-write and non-blocking (Linux allows it: no ``ENXIO``, no
EOF, a write never blocks; a full FIFO already holds a pending signal). The guest side
also plays the kernel's part, so the receiver's interrupt protocol runs as on real
hardware: RX interrupts start masked (``hv_uio_open``), delivering an interrupt masks
them again (``hv_uio_channel_cb``), and a signal to the host unmasks them
(``hv_uio_irqcontrol``). The host signals by the kernel's rule
(``need_signal_after_write``), so a receiver that forgot to unmask would hang.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import mmap
import os
import stat
from collections.abc import Callable, Iterable
from typing import Final

import trio

from ..transports.base import TransportError, os_reason
from ..transports.url import VmbusEmuAddress, format_url
from .channel import RingChannel
from .ring import RING_CONTROL_SIZE, ChannelRings
from .stream import ChannelListener, RingStream

log = logging.getLogger("gsi.vmbus")

TO_GUEST: Final = ".to-guest"
TO_HOST: Final = ".to-host"
DEFAULT_RING_SIZE: Final = 0x4000
WATCHDOG_INTERVAL: Final = 0.5
"""Seconds between checks, while a host waits, that the receiver is still there."""


@functools.cache
def _fifo_flags() -> int:
    """POSIX-only flags, read on first use so that gsi.vmbus imports anywhere."""
    return os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC


def emu_paths(path: str) -> tuple[str, str, str]:
    """The ring file and the two FIFOs of an emulated channel."""
    return path, path + TO_GUEST, path + TO_HOST


class FifoDoorbell:
    """Interrupts over two FIFOs: wait on one, signal on the other.

    Args:
        wait_fd, ring_fd: the FIFOs (read-write, non-blocking); closed by :meth:`close`.
        name: for messages.
        on_wake: called when an interrupt is taken (the emulated kernel's part).
        on_ring: called before signalling.
    """

    def __init__(self, wait_fd: int, ring_fd: int, name: str, *,
                 on_wake: Callable[[], None] | None = None,
                 on_ring: Callable[[], None] | None = None) -> None:
        self._wait_fd, self._ring_fd = wait_fd, ring_fd
        self._name = name
        self._on_wake, self._on_ring = on_wake, on_ring

    async def wait(self) -> None:
        while True:
            if self._wait_fd < 0:
                raise trio.ClosedResourceError(f"{self._name}: closed")
            await trio.lowlevel.wait_readable(self._wait_fd)
            try:
                if not os.read(self._wait_fd, 4096):
                    continue
            except (BlockingIOError, InterruptedError):
                continue
            if self._on_wake is not None:
                self._on_wake()
            return

    def ring(self) -> None:
        if self._ring_fd < 0:
            raise trio.ClosedResourceError(f"{self._name}: closed")
        if self._on_ring is not None:
            self._on_ring()
        with contextlib.suppress(BlockingIOError):  # full: signals are pending anyway
            os.write(self._ring_fd, b"\x01")

    def kick(self) -> None:
        """Wake this end's own waiter: a byte in the FIFO it waits on."""
        with contextlib.suppress(OSError):  # closed, or full: a wake-up is pending anyway
            if self._wait_fd >= 0:
                os.write(self._wait_fd, b"\x01")

    def close(self) -> None:
        fds = (self._wait_fd, self._ring_fd)
        self._wait_fd = self._ring_fd = -1
        for fd in fds:
            if fd < 0:
                continue
            with contextlib.suppress(RuntimeError):  # outside trio.run nobody waits
                trio.lowlevel.notify_closing(fd)
            os.close(fd)


def _close_all(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _lock(fd: int, *, exclusive: bool) -> bool:
    """Take an flock without blocking; False if someone else holds a conflicting one."""
    import fcntl  # here: POSIX only, and gsi.vmbus stays importable elsewhere

    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _unlock(fd: int) -> None:
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


def _remove_stale(path: str, url: str) -> None:
    """Remove the files of a receiver that is gone; refuse anything else."""
    ring, to_guest, to_host = emu_paths(path)
    present = [p for p in (ring, to_guest, to_host) if os.path.lexists(p)]
    if not present:
        return
    refuse = (f"cannot listen on {url}: {present[0]} exists and is not an emulated channel "
              "left by a receiver; refusing to replace it (remove it or pick another path)")
    kinds = {ring: stat.S_ISREG, to_guest: stat.S_ISFIFO, to_host: stat.S_ISFIFO}
    for p in present:
        if not kinds[p](os.lstat(p).st_mode):
            raise TransportError(refuse)
    if to_guest not in present:
        raise TransportError(refuse)
    fd = os.open(to_guest, _fifo_flags())
    try:
        if not _lock(fd, exclusive=True):
            raise TransportError(f"cannot listen on {url}: another receiver is listening there")
    finally:
        os.close(fd)
    for p in present:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    log.info("%s: removed the files of a receiver that is gone", url)


def _identity(path: str) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


class _GuestFiles:
    """What a listening receiver created, removed on close if still the same files."""

    def __init__(self, mapping: mmap.mmap, paths: tuple[str, ...]) -> None:
        self.mapping = mapping
        self.identities = {p: _identity(p) for p in paths}

    def close(self) -> None:
        self.mapping.close()
        for path, identity in self.identities.items():
            with contextlib.suppress(OSError):
                if _identity(path) == identity:
                    os.unlink(path)


def create_guest_channel(path: str, ring_size: int = DEFAULT_RING_SIZE) -> RingChannel:
    """Create the files and return the guest end (what uio_hv_generic would provide).

    Raises:
        TransportError: the path is taken, another receiver listens there, or the files
            cannot be made.
    """
    url = format_url(VmbusEmuAddress(path=path, ring_size=ring_size))
    ring, to_guest, to_host = emu_paths(path)
    _remove_stale(path, url)
    made: list[str] = []
    fds: list[int] = []
    try:
        for fifo in (to_guest, to_host):
            os.mkfifo(fifo, 0o600)
            made.append(fifo)
            fds.append(os.open(fifo, _fifo_flags()))
        if not _lock(fds[0], exclusive=True):
            raise TransportError(f"cannot listen on {url}: another receiver is listening there")
        tmp = f"{ring}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        made.append(tmp)
        try:
            os.ftruncate(fd, 2 * ring_size)
            mapping = mmap.mmap(fd, 2 * ring_size)
        finally:
            os.close(fd)
        rings = ChannelRings(mapping, ring_size)
        rings.init()  # hv_ringbuffer_init: indices 0, feature bit pending_send_sz
        rings.rx.interrupt_mask = 1  # hv_uio_open: RX interrupts start masked
        os.replace(tmp, ring)  # a host only ever sees an initialised ring file
        made[-1] = ring
    except BaseException as exc:
        _close_all(fds)
        for p in made:
            with contextlib.suppress(OSError):
                os.unlink(p)
        if isinstance(exc, OSError):
            raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
        raise
    files = _GuestFiles(mapping, (ring, to_guest, to_host))
    rx = rings.rx

    def interrupt_taken() -> None:  # hv_uio_channel_cb
        rx.mask_interrupts(True)

    def irqcontrol_on() -> None:  # hv_uio_irqcontrol(1), before vmbus_setevent
        rx.mask_interrupts(False)

    doorbell = FifoDoorbell(fds[0], fds[1], url, on_wake=interrupt_taken,
                            on_ring=irqcontrol_on)
    return RingChannel(rings, doorbell, guest=True, name=url, on_close=files.close)


def attach_host_channel(path: str, ring_size: int | None = None) -> RingChannel:
    """Attach to a receiver's emulated channel as its host.

    Stale answers left in the guest's TX ring by an earlier host are discarded.

    Raises:
        TransportError: no receiver there, another host attached, or a ring size that
            does not match.
    """
    url = format_url(VmbusEmuAddress(path=path, ring_size=ring_size))
    ring, to_guest, to_host = emu_paths(path)
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(ring, os.O_RDWR | os.O_CLOEXEC))
            fds.append(os.open(to_guest, _fifo_flags()))
            fds.append(os.open(to_host, _fifo_flags()))
        except FileNotFoundError:
            raise TransportError(f"cannot connect to {url}: no receiver listens there "
                                 "(no emulated channel at that path)") from None
        if _lock(fds[1], exclusive=False):
            raise TransportError(f"cannot connect to {url}: no receiver listens there "
                                 "(its files are left from one that is gone)")
        if not _lock(fds[2], exclusive=True):
            raise TransportError(f"cannot connect to {url}: another host is attached")
        size = os.fstat(fds[0]).st_size
        actual = size // 2
        if size % 2 or actual % RING_CONTROL_SIZE or actual < 2 * RING_CONTROL_SIZE:
            raise TransportError(f"cannot connect to {url}: {ring} has {size} bytes, not "
                                 "two rings")
        if ring_size is not None and ring_size != actual:
            raise TransportError(f"cannot connect to {url}: the receiver made rings of "
                                 f"{actual:#x} bytes")
        mapping = mmap.mmap(fds[0], size)
    except BaseException as exc:
        _close_all(fds)
        if isinstance(exc, OSError):
            raise TransportError(f"cannot connect to {url}: {os_reason(exc)}") from exc
        raise
    os.close(fds[0])
    rings = ChannelRings(mapping, actual, host_side=True)
    guest_lock_fd = fds[1]

    def receiver_alive() -> None:
        if _lock(guest_lock_fd, exclusive=False):
            _unlock(guest_lock_fd)
            raise trio.BrokenResourceError("the receiver is gone")

    channel = RingChannel(rings, FifoDoorbell(fds[2], fds[1], url), guest=False, name=url,
                          watchdog=receiver_alive, watchdog_interval=WATCHDOG_INTERVAL,
                          on_close=mapping.close)
    try:
        stale = channel.read_packets()
    except trio.BrokenResourceError as exc:  # a corrupt ring
        channel.close()
        raise TransportError(f"cannot connect to {url}: {exc}") from exc
    if stale:
        log.warning("%s: discarded %d answer(s) left for an earlier host", url, len(stale))
    return channel


async def open_emulated_listener(address: VmbusEmuAddress) -> ChannelListener:
    """``--listen vmbus-emu:///PATH``: create the emulated channel and listen on it."""
    ring_size = address.ring_size or DEFAULT_RING_SIZE
    channel = create_guest_channel(address.path, ring_size)
    await trio.lowlevel.checkpoint()
    return ChannelListener(channel, channel.name)


async def connect_emulated_host(address: VmbusEmuAddress) -> RingStream:
    """``connect("vmbus-emu:///PATH")``: the host's end as a stream (closing detaches)."""
    channel = attach_host_channel(address.path, address.ring_size)
    await trio.lowlevel.checkpoint()
    return RingStream(channel, owns_channel=True)
