"""The data phase of a copy: WRITEs built in place, sent in batches, answers checked in
place.

Theory of operation
-------------------
The message buffers are preallocated, one per chunk of the source: slot ``i`` of a buffer
holds a whole WRITE request, its data at slot offset 80. A worker thread reads a chunk of
the source straight into the data slots of a free buffer (``os.preadv``, or ``readinto``
slot by slot where there is no ``preadv``). The sender takes every free credit of the
window at once, has :class:`~host_sim.protocol.HostConnection` write the headers of that
many consecutive slots in place (from its template: only the transaction id, offset and
size differ) and sends them with one ``send_all`` of the buffer's own memory: nothing is
joined or copied. A buffer goes back to the reader once all its messages are sent. The
answers go to ``HostConnection.receive_data``, which takes the successful ones where they
lie and counts them; anything else comes out of ``next_answer`` and ends the copy. The
requests in flight are a range of transaction ids inside the connection, so nothing is
allocated per WRITE.

With a window of 1 exactly one WRITE is in flight and each goes out with its own
``send_all``, byte for byte what :meth:`HostConnection.write` builds.
"""

from __future__ import annotations

import io
import math
import os
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
    """

    def __init__(self, conn: HostConnection, *, send: Callable[[memoryview], Awaitable[None]],
                 receive: Callable[[], Awaitable[bytes | bytearray | memoryview]],
                 poll: Callable[[], Answer | None], check: Callable[[Answer, str], None]) -> None:
        self.conn = conn
        self._send = send
        self._receive = receive
        self._poll = poll
        self._check = check

    async def run(self, f: io.RawIOBase, size: int, window: int,
                  progress: Progress | None) -> None:
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
