"""One end of a vmbus channel: its rings, its doorbell, and the signalling rules.

Theory of operation
-------------------
A :class:`RingChannel` is one end of a channel (PROTOCOL.md section 7): two rings
(:class:`~gsi.vmbus.ring.ChannelRings`, ``tx`` is the one this end writes) and a
:class:`Doorbell` (wait for the peer's interrupt; signal the peer), backed by
``/dev/uioN`` (:mod:`gsi.vmbus.uio`) or by FIFOs (:mod:`gsi.vmbus.emu`).

Reading drains the RX ring and, by the kernel's rule (``need_signal_after_read``),
signals a peer that waits for room. Before sleeping, a reader does the ``hv_end_read``
dance: clear ``interrupt_mask``, full barrier, look again; only an empty ring lets it wait
for the doorbell, so a packet published in between is never missed. Any number of tasks
may wait: one waits on the doorbell and wakes the others, who all look again.

Writing puts one packet in the TX ring. When it is full the writer signals the peer for
what it already wrote, sets ``pending_send_sz`` and waits for the peer's "room now"
signal. The guest end (``guest=True``) follows ``hv_fcopy_uio_daemon.c``: trans_id
``VMBUS_RQST_ERROR``, flags 0, a signal after every batch of answers, unconditionally.
The host end (the emulator) numbers its packets' trans_id from 1 and signals by the
kernel's rule (``need_signal_after_write``), which is what makes the guest's unmasking
matter in the emulator.

Memory ordering: the store of ``interrupt_mask`` and the load of ``write_index`` after it
(and the mirror image on the writer's side) need a full fence; :func:`full_barrier`
provides one on x86-64. Both ends keep the stores-before-publish order of
:mod:`gsi.vmbus.ring`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Final, NoReturn, Protocol, runtime_checkable

import trio

from ..transports.base import TransportError
from .ring import (
    MAX_PACKET_SIZE,
    TRAILER_SIZE,
    VM_PKT_DATA_INBAND,
    VMBUS_RQST_ERROR,
    ChannelRings,
    Packet,
    RingError,
    RingFull,
    need_signal_after_read,
    need_signal_after_write,
    packet_ring_bytes,
)

log = logging.getLogger("gsi.vmbus")

_BARRIER: Final = threading.Lock()


def full_barrier() -> None:
    """A full memory fence between a store to shared memory and a later load.

    Python has no fence primitive. A lock round trip is one on x86-64: CPython's lock
    (a glibc semaphore) takes and gives it with ``lock``-prefixed instructions, which
    order every earlier store before every later load. On weaker architectures this is
    not guaranteed (see docs/vmbus.md).
    """
    _BARRIER.acquire()
    _BARRIER.release()


class Doorbell(Protocol):
    """The interrupt plumbing of one channel end (``/dev/uioN``, or FIFOs in the emulator)."""

    async def wait(self) -> None:
        """Return once the peer has signalled since the previous ``wait`` (consuming
        it); may return spuriously. Raises trio.BrokenResourceError when the channel is
        gone, trio.ClosedResourceError when closed meanwhile."""

    def ring(self) -> None:
        """Signal the peer (under UIO also unmasks this end's RX interrupts)."""

    def close(self) -> None:
        """Release the plumbing; a pending ``wait`` raises trio.ClosedResourceError."""


@runtime_checkable
class Kickable(Protocol):
    """A doorbell that can also wake its own waiter (a spurious interrupt), so that a
    channel can check on a timer without a cancel scope around every wait."""

    def kick(self) -> None:
        """Make a pending or the next ``wait`` return; never raises."""


class RingChannel:
    """One end of a channel: rings, doorbell and the state that outlives a session.

    Args:
        rings: this end's view (``tx`` is what it writes).
        doorbell: interrupts in and out.
        guest: the guest end (daemon rules) rather than the host end (emulator rules).
        name: for messages and logs (the URL).
        recheck_interval: look at the RX ring at least this often even without an
            interrupt (a safety net against a lost interrupt on real hardware).
        watchdog: called every ``watchdog_interval`` seconds while waiting; raises
            trio.BrokenResourceError if the peer is gone. It does not end the wait.
        on_close: releases the mapping, after the rings are released.

    The timer (``recheck_interval`` or the watchdog's) costs a cancel scope around
    every wait (several microseconds, a large part of a message), unless the doorbell is
    :class:`Kickable`: then one system task per channel kicks a waiter once per interval,
    and a waiter runs the watchdog after waking when an interval has passed since the
    last check (so a peer that is gone is noticed within two intervals).
    """

    def __init__(self, rings: ChannelRings, doorbell: Doorbell, *, guest: bool, name: str,
                 recheck_interval: float | None = None,
                 watchdog: Callable[[], None] | None = None, watchdog_interval: float = 0.5,
                 on_close: Callable[[], None] | None = None) -> None:
        self.rings = rings
        self.doorbell = doorbell
        self.guest = guest
        self.name = name
        self.broken: str | None = None
        self.closed = False
        self.last_negotiate: bytes | None = None
        """The latest NEGOTIATE a session accepted (guest end): the next session resumes it."""
        self._recheck = recheck_interval
        self._watchdog = watchdog
        self._interval = recheck_interval or (watchdog_interval if watchdog else math.inf)
        self._on_close = on_close
        self._next_trans_id = 1
        self._unsignalled = False
        self._tx_lock = trio.Lock()
        self._waiting = False
        self._woken: trio.Event | None = None  # made when a second task waits
        self._kick = doorbell.kick if isinstance(doorbell, Kickable) else None
        self._ticker: trio.CancelScope | None = None
        self._ticker_run: trio.lowlevel.TrioToken | None = None
        self._watch_due = -math.inf

    def check_usable(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError(f"{self.name}: the channel is closed")
        if self.broken is not None:
            raise trio.BrokenResourceError(f"{self.name}: the channel is broken: {self.broken}")

    def _fail(self, why: str) -> NoReturn:
        if self.broken is None:
            self.broken = why
            log.error("%s: %s; the channel is unusable", self.name, why)
        raise trio.BrokenResourceError(f"{self.name}: {why}")

    # -- interrupts ---------------------------------------------------------------

    async def wait(self) -> None:
        """Until the peer signals (or spuriously). Any number of tasks may wait: one
        waits on the doorbell and wakes the others, who then all look again."""
        if self._waiting:
            if self._woken is None:
                self._woken = trio.Event()
            await self._woken.wait()
            return
        self._waiting = True
        try:
            if self._interval == math.inf:  # nothing on a timer: no cancel scope to pay
                await self._wait_doorbell()
            elif self._kick is not None:
                self._start_ticker()
                await self._wait_doorbell()
                if self._watchdog is not None and trio.current_time() >= self._watch_due:
                    self._watch_due = trio.current_time() + self._interval
                    self._check_peer()
            else:
                await self._wait_timed()
        finally:
            self._waiting = False
            if self._woken is not None:
                self._woken.set()
                self._woken = None

    async def _wait_timed(self) -> None:
        while True:
            with trio.move_on_after(self._interval) as scope:
                await self._wait_doorbell()
            if not scope.cancelled_caught:
                return
            self._check_peer()
            if self._recheck is not None:
                return

    def _check_peer(self) -> None:
        if self._watchdog is not None:
            try:
                self._watchdog()
            except trio.BrokenResourceError as exc:
                self._fail(str(exc))

    def _start_ticker(self) -> None:
        """The system task that kicks a waiter every interval, once per trio run."""
        run = trio.lowlevel.current_trio_token()
        if self._ticker_run is not run:
            self._ticker_run, self._ticker = run, trio.CancelScope()
            trio.lowlevel.spawn_system_task(self._tick, self._ticker,
                                            name=f"{self.name} timer")

    async def _tick(self, scope: trio.CancelScope) -> None:
        with scope:
            while not self.closed:
                await trio.sleep(self._interval)
                if self._waiting and self._kick is not None:
                    self._kick()

    async def _wait_doorbell(self) -> None:
        try:
            await self.doorbell.wait()
        except trio.BrokenResourceError as exc:
            self._fail(str(exc))  # rescinded: never wait on it again

    def signal_peer(self) -> None:
        try:
            self.doorbell.ring()
        except (OSError, trio.BrokenResourceError) as exc:
            self._fail(f"cannot signal the peer: {exc}")

    def flush_signal(self) -> None:
        """Signal the peer if packets were written since the last signal and need one."""
        if self._unsignalled:
            self._unsignalled = False
            self.signal_peer()

    # -- reading --------------------------------------------------------------------

    def read_packets(self, limit: int | None = None) -> list[Packet]:
        """Consume every packet in the RX ring (at most ``limit``); signal a writer
        waiting for room."""
        rx = self.rings.rx
        try:
            packets, consumed = rx.read_packets(limit)
            if consumed:
                full_barrier()
                # A writer that waits for room has set pending_send_sz: only then is the
                # rest of the rule worth reading (it is False when that is 0).
                if rx.pending_send_sz and need_signal_after_read(
                        feature_bits=rx.feature_bits, pending_send_sz=rx.pending_send_sz,
                        write_space=rx.bytes_available_to_write(), bytes_read=consumed):
                    self.signal_peer()
        except RingError as exc:
            self._fail(f"corrupt RX ring: {exc}")
        return packets

    def poll_rx(self, seconds: float) -> bool:
        """Read the RX ring's indices for up to ``seconds`` without sleeping (interrupts
        stay masked: a host that sees them masked does not signal); True once a packet
        is there."""
        rx = self.rings.rx
        deadline = time.perf_counter() + seconds
        try:
            while True:
                if rx.bytes_available_to_read():
                    return True
                if time.perf_counter() >= deadline:
                    return False
        except RingError as exc:
            self._fail(f"corrupt RX ring: {exc}")

    def ready_to_sleep(self) -> bool:
        """Unmask RX interrupts, then look again: True if the RX ring is still empty."""
        rx = self.rings.rx
        rx.mask_interrupts(False)
        full_barrier()
        try:
            return rx.bytes_available_to_read() == 0
        except RingError as exc:
            self._fail(f"corrupt RX ring: {exc}")

    # -- writing ------------------------------------------------------------------

    def try_write(self, payload: bytes | bytearray | memoryview, *,
                  trans_id: int | None = None, flags: int = 0,
                  packet_type: int = VM_PKT_DATA_INBAND) -> bool:
        """Write one packet now if it fits; False if the ring is full.

        ``trans_id`` None: this end's numbering (VMBUS_RQST_ERROR on the guest end, 1, 2,
        ... on the host end); the other arguments are for fault injection.
        """
        tx = self.rings.tx
        numbered = trans_id is None and not self.guest
        if trans_id is None:
            trans_id = VMBUS_RQST_ERROR if self.guest else self._next_trans_id
        try:
            old = tx.append_packet(payload, trans_id=trans_id, flags=flags, type=packet_type)
        except RingFull:
            return False
        except RingError as exc:
            self._fail(f"corrupt TX ring: {exc}")
        if numbered:  # 1, 2, ... never 0 or VMBUS_RQST_ERROR
            self._next_trans_id = trans_id % (VMBUS_RQST_ERROR - 1) + 1
        if tx.pending_send_sz:
            tx.pending_send_sz = 0
        if self.guest:
            self._unsignalled = True
        else:
            full_barrier()
            _, read_index, interrupt_mask, _ = tx.control()
            if need_signal_after_write(old_write_index=old, read_index=read_index,
                                       interrupt_mask=interrupt_mask):
                self._unsignalled = True
        return True

    async def write(self, payload: bytes | bytearray | memoryview, *,
                    trans_id: int | None = None, flags: int = 0,
                    packet_type: int = VM_PKT_DATA_INBAND) -> None:
        """Write one packet (see :meth:`try_write`), waiting for room while the ring is
        full. Not a checkpoint when the packet fits at once (the stream's methods are)."""
        tx = self.rings.tx
        total = packet_ring_bytes(len(payload))
        if total - TRAILER_SIZE > MAX_PACKET_SIZE or total >= tx.data_size:
            raise TransportError(
                f"{self.name}: a {len(payload)}-byte message can never fit a ring of "
                f"{tx.ring_size:#x} bytes (use a smaller fragment or a larger ring)")
        if not self._tx_lock.locked():  # no writer waiting for room: try at once
            self.check_usable()
            if self.try_write(payload, trans_id=trans_id, flags=flags,
                              packet_type=packet_type):
                return
        async with self._tx_lock:
            while True:
                self.check_usable()
                if self.try_write(payload, trans_id=trans_id, flags=flags,
                                  packet_type=packet_type):
                    return
                self.flush_signal()  # the peer must drain what we wrote before
                tx.pending_send_sz = total
                full_barrier()
                try:
                    if tx.bytes_available_to_write() > total:
                        continue
                except RingError as exc:
                    self._fail(f"corrupt TX ring: {exc}")
                await self.wait()

    def close(self) -> None:
        """Release doorbell, rings and mapping; waiting tasks get ClosedResourceError."""
        if self.closed:
            return
        self.closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        try:
            self.doorbell.close()
        finally:
            self.rings.release()
            if self._on_close is not None:
                self._on_close()
