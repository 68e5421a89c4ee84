"""The data phase of a copy: WRITEs built in place, sent in batches, answers checked in
place.

Theory of operation
-------------------
Over a plain socket stream (:func:`gsi.transports.raw_socket` finds its non-blocking
socket) with a source that can be mapped (Linux, ``MADV_POPULATE_READ``),
:class:`MappedCopy` sends each WRITE as two pieces of one ``sendmsg``: its 80-byte
prefix, one per transaction id in :attr:`HostConnection.prefixes` where
:meth:`~HostConnection.write_prefixes` writes only the offset, and its data straight from
the mapping, so the file is copied once, by the kernel into the socket. A worker thread
makes the mapping resident 8 MiB blocks ahead of the sender (the loop never waits on the
disk) and unmaps what was sent. One task sends every free credit of the window at once
and takes the answers already received (``recv_into`` a reused buffer) before each batch;
it waits on trio only when the socket has nothing for it: for answers once every credit
is out, for room when a send is cut short (a helper task then takes the answers, since
the guest may be waiting to send them before it reads on).

Any other stream or source: the message buffers are preallocated, one per chunk of the
source: slot ``i`` of a buffer holds a whole WRITE request, its data at slot offset 80.
A worker thread reads a chunk of the source straight into the data slots of a free buffer
(``os.preadv``, or ``readinto`` slot by slot where there is no ``preadv``). The sender
takes every free credit of the window at once, has
:class:`~host_sim.protocol.HostConnection` write the headers of that many consecutive
slots in place (from its template: only the transaction id, offset and size differ) and
sends them with one ``send_all`` of the buffer's own memory: nothing is joined or copied.
A buffer goes back to the reader once all its messages are sent.

Either way the answers go to ``HostConnection.receive_data``, which takes the successful
ones where they lie and counts them; anything else comes out of ``next_answer`` and ends
the copy. The requests in flight are a range of transaction ids inside the connection,
so nothing is allocated per WRITE. With a window of 1 exactly one WRITE is in flight and
each goes out with its own send, byte for byte what :meth:`HostConnection.write` builds.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import mmap
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from gsi.codec import WRITE_DATA_OFFSET
from gsi.errors import CopyFailed

from .protocol import Answer, HostConnection

Progress = Callable[[int, int], None]
"""Called with (bytes acknowledged, file size) after each batch of answers."""

READ_AHEAD_CHUNKS = 2
"""Buffers read ahead of the one being sent."""
CHUNK_BYTES = 1 << 20
"""About this many bytes of requests per buffer (at least one WRITE)."""
IOV_MAX = 1024
"""Slots per ``preadv`` call (the Linux limit)."""


@dataclass(slots=True)
class _Chunk:
    """A buffer of WRITE slots; ``count`` of them hold the data from ``offset`` on."""

    buf: bytearray
    offset: int = 0
    count: int = 0
    last: int = 0
    """Data bytes of the last slot (the others hold a whole fragment)."""


class _Window:
    """Credits for requests in flight; the sender takes all that are free at once."""

    def __init__(self, size: int) -> None:
        self._free = size
        self._changed = trio.Event()

    async def take(self) -> int:
        while self._free == 0:
            await self._changed.wait()
            self._changed = trio.Event()
        taken, self._free = self._free, 0
        return taken

    def give_back(self, credits: int) -> None:
        if credits:
            self._free += credits
            self._changed.set()


def read_slots(f: io.RawIOBase, chunk: _Chunk, stride: int, fragment: int,
               size: int) -> None:
    """Read ``chunk.count`` fragments from ``chunk.offset`` into the chunk's data slots.

    Raises:
        CopyFailed: the source ended before ``size`` bytes.
        OSError: it cannot be read.
    """
    view = memoryview(chunk.buf)
    slots = [view[i * stride + WRITE_DATA_OFFSET:i * stride + WRITE_DATA_OFFSET + fragment]
             for i in range(chunk.count)]
    slots[-1] = slots[-1][:chunk.last]
    preadv = getattr(os, "preadv", None)  # not on Windows: read slot by slot there
    offset, first = chunk.offset, 0
    while first < len(slots):
        if preadv is not None:
            got = preadv(f.fileno(), slots[first:first + IOV_MAX], offset)
        else:
            got = f.readinto(slots[first]) or 0
        if not got:
            raise CopyFailed(f"the source shrank while it was read ({size - offset} bytes "
                             "missing)")
        offset += got
        while got and got >= len(slots[first]):
            got -= len(slots[first])
            first += 1
        if got:
            slots[first] = slots[first][got:]


class DataSender:
    """The WRITEs of one copy, from ``f`` (at position 0) over ``conn``.

    Args:
        send: sends bytes (raises CopyFailed when the connection is lost).
        receive: the next received bytes (empty: closed; raises CopyFailed), valid until
            the next call.
        poll: the next answer already received, or None (raises CopyFailed when the
            guest broke the protocol).
        check: raises CopyFailed for a failure answer.
        sock: the raw non-blocking socket under the stream, if it is a plain socket
            stream: a source that can be mapped then goes out as :class:`MappedCopy`.
        buffer: where ``sock``'s answers are received.
    """

    def __init__(self, conn: HostConnection, *, send: Callable[[memoryview], Awaitable[None]],
                 receive: Callable[[], Awaitable[bytes | bytearray | memoryview]],
                 poll: Callable[[], Answer | None], check: Callable[[Answer, str], None],
                 sock: socket.socket | None = None, buffer: memoryview | None = None,
                 ) -> None:
        self.conn = conn
        self._send = send
        self._receive = receive
        self._poll = poll
        self._check = check
        self._sock = sock
        self._buffer = buffer

    async def run(self, f: io.RawIOBase, size: int, window: int,
                  progress: Progress | None) -> None:
        if self._sock is not None and self._buffer is not None and \
                (mm := map_source(f, size)) is not None:
            try:
                await MappedCopy(self.conn, self._sock, self._buffer, mm, f.fileno(), size,
                                 window=window, poll=self._poll, check=self._check,
                                 progress=progress).run()
            finally:
                with contextlib.suppress(BufferError):  # a view a traceback holds: freed later
                    mm.close()
            return
        frag = self.conn.fragment_size
        fragments = math.ceil(size / frag)
        if fragments == 0:
            return
        stride = self.conn.write_length
        per_chunk = min(fragments, max(1, CHUNK_BYTES // stride))
        chunks = math.ceil(fragments / per_chunk)
        free_in, free_out = trio.open_memory_channel[_Chunk](READ_AHEAD_CHUNKS + 1)
        for _ in range(min(chunks, READ_AHEAD_CHUNKS + 1)):
            free_in.send_nowait(_Chunk(bytearray(per_chunk * stride)))
        full_in, full_out = trio.open_memory_channel[_Chunk](READ_AHEAD_CHUNKS)
        credits = _Window(window)

        async def read_source() -> None:
            async with full_in:
                for first in range(0, fragments, per_chunk):
                    chunk = await free_out.receive()
                    chunk.offset = first * frag
                    chunk.count = min(per_chunk, fragments - first)
                    chunk.last = min(frag, size - (first + chunk.count - 1) * frag)
                    await trio.to_thread.run_sync(read_slots, f, chunk, stride, frag, size)
                    await full_in.send(chunk)

        async def send_writes() -> None:
            async with full_out, free_in:
                async for chunk in full_out:
                    await self._send_chunk(chunk, credits)
                    await free_in.send(chunk)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_source)
            nursery.start_soon(send_writes)
            nursery.start_soon(self._read_answers, fragments, size, credits, progress)

    async def _send_chunk(self, chunk: _Chunk, credits: _Window) -> None:
        """Send the chunk's WRITEs, as many at a time as the window allows."""
        conn, frag, stride = self.conn, self.conn.fragment_size, self.conn.write_length
        view = memoryview(chunk.buf)
        done = 0
        while done < chunk.count:
            taken = await credits.take()
            batch = min(taken, chunk.count - done)
            credits.give_back(taken - batch)
            start, offset = done * stride, chunk.offset + done * frag
            full = batch if done + batch < chunk.count or chunk.last == frag else batch - 1
            end = start
            if full:
                end = conn.writes_into(view, start, offset, full)
            if full < batch:
                end = conn.write_into(view, start + full * stride, offset + full * frag,
                                      chunk.last)
            await self._send(view[start:end])
            done += batch

    async def _read_answers(self, fragments: int, size: int, credits: _Window,
                            progress: Progress | None) -> None:
        conn, frag, done = self.conn, self.conn.fragment_size, 0
        while done < fragments:
            taken = conn.receive_data(await self._receive())
            # Anything but a plain success comes out here (and ends the copy).
            while done + taken < fragments and (answer := self._poll()) is not None:
                self._check(answer, "WRITE")
                taken += 1
            if not taken and conn.closed:
                raise CopyFailed("the guest closed the connection")
            done += taken
            credits.give_back(taken)
            if progress is not None:
                progress(min(done * frag, size), size)


POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
"""``madvise`` advice (Linux 5.14): fault the pages in; EFAULT past the end of the file."""
MAP_BLOCK = 8 << 20
"""Bytes of a mapped source made resident per hand-off to a worker thread."""
MAP_AHEAD = 2
"""Blocks made resident ahead of the one being sent."""
DRAIN_TRIES = 4
"""Receives tried without waiting after one that found answers."""


def map_source(f: io.RawIOBase, size: int) -> mmap.mmap | None:
    """``size`` bytes of ``f`` mapped read-only, or None where that cannot be done (not
    Linux, an empty or shorter file, no mmap, no ``MADV_POPULATE_READ``)."""
    if size == 0 or sys.platform != "linux":
        return None
    try:
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    except (OSError, ValueError, OverflowError):
        return None
    try:
        mm.madvise(POPULATE_READ, 0, 0)  # EINVAL where the kernel lacks it
    except OSError:
        mm.close()
        return None
    return mm


def _shrank(fd: int, size: int) -> CopyFailed:
    return CopyFailed(f"the source shrank while it was read ({size - os.fstat(fd).st_size} "
                      "bytes missing)")


def _populate(mm: mmap.mmap, fd: int, size: int, start: int, end: int, dropped: int,
              drop: int) -> None:
    """Worker thread: make ``[start, end)`` of the mapping resident (a read of the disk
    where it is not cached), and unmap ``[dropped, drop)``, already sent.

    Raises:
        CopyFailed: the file no longer reaches ``end``.
    """
    page = mmap.PAGESIZE
    start -= start % page
    try:
        mm.madvise(POPULATE_READ, start, end - start)
    except OSError as exc:
        if exc.errno != errno.EFAULT:
            raise
        raise _shrank(fd, size) from exc
    drop -= drop % page
    if drop > dropped:
        mm.madvise(mmap.MADV_DONTNEED, dropped, drop - dropped)


class MappedCopy:
    """The WRITEs of one copy from a mapped source over a raw non-blocking socket.

    Each WRITE goes out as two pieces of one ``sendmsg``: its 80-byte prefix (from
    :attr:`HostConnection.prefixes`, one per transaction id, where only the offset
    changes) and its data straight from the mapping, so the kernel copies the file once,
    into the socket. A worker thread makes the mapping resident a block ahead of the
    sender (so the loop does not wait on the disk) and unmaps what was sent. Answers are
    received into one reused buffer with ``recv_into`` and taken by
    :meth:`HostConnection.receive_data`. One task does the sending and the receiving,
    and waits on trio only when the socket has nothing for it (EAGAIN) or every credit
    is out; while a send waits for room, a helper task takes the answers meanwhile (the
    guest may be waiting to send them before it reads on).
    """

    def __init__(self, conn: HostConnection, sock: socket.socket, buffer: memoryview,
                 mm: mmap.mmap, fd: int, size: int, *, window: int,
                 poll: Callable[[], Answer | None], check: Callable[[Answer, str], None],
                 progress: Progress | None) -> None:
        self.conn, self._sock, self._buf, self._mm, self._fd = conn, sock, buffer, mm, fd
        self.size, self._poll, self._check, self._progress = size, poll, check, progress
        self.fragments = math.ceil(size / conn.fragment_size)
        self.credits, self.ready, self.sent, self.done = window, 0, 0, 0
        self._sender: trio.Event | None = None
        """Set when the sender, waiting on it, may go on."""
        self._reader: trio.Event | None = None
        """Set when more was sent (the read-ahead waits on it)."""
        self._help = trio.Event()
        """Set while the sender waits for room: the helper takes the answers."""
        self._helping = False
        """The helper waits for answers: the sender waits on ``_sender`` for them."""
        self._blocked = False
        """The sender waits for room (the helper may wait for answers)."""

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read_ahead)
            nursery.start_soon(self._help_receive)
            await self._send_writes()
            while self.done < self.fragments:
                await self._await_answers()
            nursery.cancel_scope.cancel()

    async def _sleep(self) -> None:
        """Wait until an answer or a resident block changes what the sender can do."""
        self._sender = trio.Event()
        await self._sender.wait()
        self._sender = None

    async def _await_answers(self) -> None:
        """Wait for answers (some are due) and take them."""
        if self._helping:
            await self._sleep()
        else:
            await trio.lowlevel.wait_readable(self._sock)
            self._take()

    @staticmethod
    def _wake(event: trio.Event | None) -> None:
        if event is not None:
            event.set()

    async def _read_ahead(self) -> None:
        frag, dropped = self.conn.fragment_size, 0
        for start in range(0, self.size, MAP_BLOCK):
            while self.sent * frag + MAP_AHEAD * MAP_BLOCK < start:
                self._reader = trio.Event()
                await self._reader.wait()
            end, drop = min(self.size, start + MAP_BLOCK), self.sent * frag
            await trio.to_thread.run_sync(_populate, self._mm, self._fd, self.size, start,
                                          end, dropped, drop)
            dropped, self.ready = max(dropped, drop - drop % mmap.PAGESIZE), end
            self._wake(self._sender)

    async def _send_writes(self) -> None:
        conn, frag, size, fragments = self.conn, self.conn.fragment_size, self.size, \
            self.fragments
        prefixes, data = conn.prefixes, memoryview(self._mm)
        sock, stride = self._sock, conn.write_length
        last_full = size % frag == 0
        sent = 0
        while sent < fragments:
            self._take()
            ready = fragments if self.ready == size else self.ready // frag
            batch = min(self.credits, ready - sent)
            if batch <= 0:
                if self.credits:
                    await self._sleep()  # for the read-ahead
                else:
                    await self._await_answers()
                continue
            self.credits -= batch
            offset = sent * frag
            full = batch if last_full or sent + batch < fragments else batch - 1
            iov: list[bytes | memoryview] = []
            if full:
                tid = conn.write_prefixes(offset, full)
                for _ in range(full):
                    iov += prefixes[tid], data[offset:offset + frag]
                    tid = (tid + 1) & 0xFF
                    offset += frag
            if full < batch:
                iov += conn.write_parts(offset, data[offset:size])
            try:
                wrote = sock.sendmsg(iov)  # the whole batch, mostly
            except BlockingIOError:
                wrote = 0
            except OSError as exc:
                raise self._lost(exc) from exc
            if wrote < full * stride or full < batch:
                await self._send_rest(iov, wrote)
            sent += batch
            self.sent = sent
            self._wake(self._reader)

    def _lost(self, exc: OSError) -> CopyFailed:
        if exc.errno == errno.EFAULT:  # the mapping no longer reaches the data
            return _shrank(self._fd, self.size)
        return CopyFailed(f"connection lost: {exc}")

    async def _send_rest(self, iov: list[bytes | memoryview], n: int) -> None:
        """Send what is left of ``iov`` after its first ``n`` bytes, waiting for room."""
        sock = self._sock
        while True:
            for i, piece in enumerate(iov):
                if n < len(piece):
                    del iov[:i]
                    if n:
                        iov[0] = iov[0][n:]
                    break
                n -= len(piece)
            else:
                return
            self._blocked = True
            self._help.set()
            try:
                await trio.lowlevel.wait_writable(sock)
            finally:
                self._blocked = False
                self._help = trio.Event()
            try:
                n = sock.sendmsg(iov)
            except BlockingIOError:
                n = 0
            except OSError as exc:
                raise self._lost(exc) from exc

    async def _help_receive(self) -> None:
        """Take the answers while the sender waits for room to send."""
        while True:
            await self._help.wait()
            if not self._blocked:  # the send went on before this task ran
                continue
            self._helping = True
            try:
                await trio.lowlevel.wait_readable(self._sock)
            finally:
                self._helping = False
            self._take()
            self._wake(self._sender)

    def _take(self) -> None:
        """Take the answers already received, without waiting."""
        sock, buf = self._sock, self._buf
        for _ in range(DRAIN_TRIES):
            try:
                n = sock.recv_into(buf)
            except BlockingIOError:
                return
            except OSError as exc:
                raise CopyFailed(f"connection lost: {exc}") from exc
            self._answers(buf[:n])
            if n < len(buf) // 2:  # the rest has likely not arrived yet
                return

    def _answers(self, data: memoryview) -> None:
        conn = self.conn
        taken = conn.receive_data(data)
        # Anything but a plain success comes out here (and ends the copy).
        while self.done + taken < self.fragments and (answer := self._poll()) is not None:
            self._check(answer, "WRITE")
            taken += 1
        if not taken:
            if conn.closed:
                raise CopyFailed("the guest closed the connection")
            return
        self.done += taken
        self.credits += taken
        self._wake(self._sender)
        if self._progress is not None:
            self._progress(min(self.done * self.conn.fragment_size, self.size), self.size)
