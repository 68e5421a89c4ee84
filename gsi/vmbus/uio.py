"""The real fcopy channel under ``uio_hv_generic``: sysfs discovery, mapping, interrupts.

What ``hv_fcopy_uio_daemon.c`` does at start, step by step:

1. the device: ``/sys/bus/vmbus/devices/<instance>`` (instance
   eb765408-105f-49b6-b4aa-c123b64d17d4 for fcopy); its ``uio/`` directory names the
   ``uioN`` node, ``/dev/uioN``.
2. the ring size: the size of ``channels/<relid>/ring`` (TX and RX rings together) / 2.
   This module cross-checks it against ``uio/uioN/maps/map0/size`` (the size of the
   mapping itself) and prefers the latter when they disagree: on kernels before the
   ``ring`` file got its real size it reported a fixed size.
3. ``open`` (the kernel connects the channel: the host sees it open and negotiates),
   ``mmap`` map 0 (``2 * ring_size`` bytes, TX ring first), clear the RX
   ``interrupt_mask`` that ``hv_uio_open`` left set.
4. the loop: a 4-byte ``read`` blocks until the host's interrupt (the kernel masks RX
   interrupts when it delivers one); a 4-byte ``write`` of 1 calls ``hv_uio_irqcontrol``:
   clear the mask and signal the host.

Here the fd is non-blocking and trio polls it (``uio_poll`` reports an interrupt as
readable), so no thread is parked in ``read``; a ``read`` that finds nothing
(``EAGAIN``) just waits again. A ``read`` failing with ``EIO`` means the channel was
rescinded. As a safety net against a lost interrupt the RX ring is also looked at once a
second (:data:`RECHECK_INTERVAL`).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from ..constants import FCOPY_CLASS_GUID
from ..transports.base import TransportError, os_reason
from ..transports.url import VMBUS_FCOPY_INSTANCE, VmbusAddress, format_url
from .channel import RingChannel
from .ring import RING_CONTROL_SIZE, ChannelRings
from .stream import ChannelListener

log = logging.getLogger("gsi.vmbus")

UIO_DRIVER: Final = "uio_hv_generic"
VMBUS_DEVICES: Final = "bus/vmbus/devices"
RECHECK_INTERVAL: Final = 1.0
"""Seconds between looks at the RX ring when no interrupt comes."""

_IRQ_ON: Final = struct.pack("<i", 1)
_UIO_NAME: Final = re.compile(r"uio[0-9]+")
_DOCS: Final = "see docs/vmbus.md"


@dataclass(frozen=True, slots=True, kw_only=True)
class UioChannelInfo:
    """Where the channel is and how big its rings are.

    Attributes:
        instance: the vmbus device instance GUID.
        device_dir: ``/sys/bus/vmbus/devices/<instance>``.
        uio_name: ``uioN``.
        device_node: ``/dev/uioN``.
        ring_size: one ring, control page included; map 0 is twice this.
        ring_file: the ``channels/<relid>/ring`` file the size came from, if any.
        map_size: ``uio/uioN/maps/map0/size``, if readable.
    """

    instance: uuid.UUID
    device_dir: Path
    uio_name: str
    device_node: Path
    ring_size: int
    ring_file: Path | None
    map_size: int | None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def _driver(device_dir: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(device_dir / "driver"))
    except OSError:
        return None


def _uio_name(device_dir: Path, instance: uuid.UUID) -> str:
    try:
        names = sorted((p.name for p in (device_dir / "uio").iterdir()
                        if _UIO_NAME.fullmatch(p.name)), key=lambda n: int(n[3:]))
    except OSError:
        names = []
    if not names:
        raise TransportError(f"vmbus device {instance} has no uio device under "
                             f"{device_dir / 'uio'}; is {UIO_DRIVER} bound to it? ({_DOCS})")
    if len(names) > 1:
        log.warning("vmbus device %s has several uio devices %s; using %s",
                    instance, names, names[0])
    return names[0]


def _ring_file(device_dir: Path) -> tuple[Path, int] | None:
    """The first ``channels/<relid>/ring`` file and its size, like the daemon."""
    try:
        channels = sorted(p for p in (device_dir / "channels").iterdir() if p.is_dir())
    except OSError:
        return None
    for channel in channels:
        ring = channel / "ring"
        try:
            return ring, ring.stat().st_size
        except OSError:
            continue
    return None


def _check_geometry(ring_size: int, where: str, instance: uuid.UUID) -> int:
    if ring_size % RING_CONTROL_SIZE or ring_size < 2 * RING_CONTROL_SIZE:
        raise TransportError(f"vmbus device {instance}: ring size {ring_size:#x} from "
                             f"{where} is not a multiple of 4096 of at least 0x2000 "
                             "(override it: vmbus://INSTANCE?ring_size=0x4000)")
    return ring_size


def find_uio_channel(instance: uuid.UUID = VMBUS_FCOPY_INSTANCE, *,
                     ring_size: int | None = None, sysfs: Path = Path("/sys"),
                     dev: Path = Path("/dev")) -> UioChannelInfo:
    """Find the channel's uio device and ring size in sysfs (read only; opens nothing).

    Args:
        instance: the vmbus device instance.
        ring_size: use this ring size instead of what sysfs says.
        sysfs, dev: where sysfs and the device nodes are (tests use a fake tree).

    Raises:
        TransportError: no such device, not the fcopy class, not bound to
            uio_hv_generic, no uio node, or no usable ring size; the message says what
            to do.
    """
    device_dir = sysfs / VMBUS_DEVICES / str(instance)
    if not device_dir.is_dir():
        raise TransportError(
            f"no vmbus device {instance} in {device_dir.parent}: not a Hyper-V guest, or the "
            "host has Guest Services off (Enable-VMIntegrationService -Name 'Guest Service "
            f"Interface' on the host) ({_DOCS})")
    class_id = _read_text(device_dir / "class_id")
    if class_id is not None and class_id.strip("{}").lower() != str(FCOPY_CLASS_GUID):
        raise TransportError(f"vmbus device {instance} is of class {class_id}, not the file "
                             f"copy service {{{FCOPY_CLASS_GUID}}}")
    driver = _driver(device_dir)
    if driver != UIO_DRIVER:
        bound = f"bound to {driver}" if driver else "not bound to any driver"
        raise TransportError(f"vmbus device {instance} is {bound}, not {UIO_DRIVER}: "
                             f"modprobe {UIO_DRIVER} and write the class GUID to "
                             f"/sys/bus/vmbus/drivers/{UIO_DRIVER}/new_id ({_DOCS})")
    uio_name = _uio_name(device_dir, instance)
    map_text = _read_text(device_dir / "uio" / uio_name / "maps" / "map0" / "size")
    try:
        map_size = int(map_text, 0) if map_text else None
    except ValueError:
        map_size = None
    found = _ring_file(device_dir)
    ring_file = found[0] if found else None
    if ring_size is not None:
        where = "the URL"
    elif found is not None:
        ring_size, where = found[1] // 2, str(found[0])
        if map_size is not None and map_size != found[1]:
            log.warning("%s says %#x bytes but map 0 is %#x; using map 0 (older kernels gave "
                        "the ring file a fixed size)", found[0], found[1], map_size)
            ring_size, where = map_size // 2, "map0/size"
    elif map_size is not None:
        ring_size, where = map_size // 2, "map0/size"
    else:
        raise TransportError(f"vmbus device {instance}: no channels/*/ring file and no "
                             "map0/size to take the ring size from (override it: "
                             "vmbus://INSTANCE?ring_size=0x4000)")
    _check_geometry(ring_size, where, instance)
    if map_size is not None and map_size < 2 * ring_size:
        raise TransportError(f"vmbus device {instance}: ring size {ring_size:#x} from {where} "
                             f"needs {2 * ring_size:#x} bytes but map 0 has {map_size:#x}")
    return UioChannelInfo(instance=instance, device_dir=device_dir, uio_name=uio_name,
                          device_node=dev / uio_name, ring_size=ring_size,
                          ring_file=ring_file, map_size=map_size)


class UioDoorbell:
    """The interrupt side of ``/dev/uioN``: 4-byte ``read`` waits, ``write`` of 1 signals.

    Args:
        fd: the device, opened read-write and non-blocking; the doorbell closes it.
        name: for messages.
    """

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name

    async def wait(self) -> None:
        while True:
            if self._fd < 0:
                raise trio.ClosedResourceError(f"{self._name}: closed")
            await trio.lowlevel.wait_readable(self._fd)
            try:
                os.read(self._fd, 4)  # the interrupt count; only "there was one" matters
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                why = "the host rescinded the channel" if exc.errno == errno.EIO else \
                    os_reason(exc)
                raise trio.BrokenResourceError(f"{self._name}: {why}") from exc
            return

    def ring(self) -> None:
        if self._fd < 0:
            raise trio.ClosedResourceError(f"{self._name}: closed")
        try:
            os.write(self._fd, _IRQ_ON)
        except OSError as exc:
            raise trio.BrokenResourceError(
                f"{self._name}: signalling the host failed: {os_reason(exc)}") from exc

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd < 0:
            return
        with contextlib.suppress(RuntimeError):  # outside trio.run nobody waits
            trio.lowlevel.notify_closing(fd)
        os.close(fd)


def open_uio_channel(info: UioChannelInfo, *, name: str | None = None) -> RingChannel:
    """Open and map the device: the guest end of the real channel.

    Raises:
        TransportError: the device cannot be opened or mapped.
    """
    name = name or format_url(VmbusAddress(instance=info.instance))
    node = info.device_node
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        hint = " (run as root)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
        raise TransportError(f"cannot open {node} for {name}: {os_reason(exc)}{hint}") from exc
    try:
        mapping = mmap.mmap(fd, 2 * info.ring_size, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
    except (OSError, ValueError) as exc:
        os.close(fd)
        raise TransportError(f"cannot map {2 * info.ring_size:#x} bytes of {node}: "
                             f"{exc}") from exc
    rings = ChannelRings(mapping, info.ring_size)
    rings.rx.interrupt_mask = 0  # hv_uio_open leaves it 1; the daemon clears it like this
    log.info("%s: %s mapped, rings of %#x bytes", name, node, info.ring_size)
    return RingChannel(rings, UioDoorbell(fd, str(node)), guest=True, name=name,
                       recheck_interval=RECHECK_INTERVAL, on_close=mapping.close)


async def open_uio_listener(address: VmbusAddress, *, sysfs: Path = Path("/sys"),
                            dev: Path = Path("/dev")) -> ChannelListener:
    """Find, open and map the channel; the listener hands it out as the connection."""
    info = find_uio_channel(address.instance, ring_size=address.ring_size, sysfs=sysfs,
                            dev=dev)
    url = format_url(address)
    channel = open_uio_channel(info, name=url)
    await trio.lowlevel.checkpoint()
    return ChannelListener(channel, url)
