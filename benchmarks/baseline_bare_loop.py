"""Baseline "bare request/answer loop": a guest that only answers.

It serves the real host simulator exactly like ``gsi-receiver`` does at the I/O level
(the same :mod:`gsi.transports` listeners and streams, ``receive_some`` of 256 KiB, the
answers to one received chunk sent with one ``send_all``) but does no protocol work and
no file work: it frames the stream by the pipe header alone and echoes each message with
``status`` = 0 (payload offset 20) and ``icflags`` = 0x05 (offset 25). The answers have
the receiver's exact sizes: the whole request echoed, or with ``--trim-write-echo`` a
WRITE (icmsgtype 7, operation 1) trimmed to its first 80 bytes as ``gsi-receiver
--trim-write-echo`` does. The one NEGOTIATE of a connection (icmsgtype 0) gets the
version choice written in (counts 1/1, framework 3.0, message 1.1) so the host proceeds.

On a packet pipe (the guest end of a ``vmbus-emu://`` channel, whose stream has
``packet_pipe`` set) each receive is one whole packet payload, padding included: the
message is cut to its pipe header's ``8 + msgsize`` and the rest of the packet dropped,
and the answer goes out as one packet, as ``gsi-receiver`` does on the ring. The ring
always echoes whole: ``--trim-write-echo`` does not apply there.

Run against ``host-sim``/the benchmark driver, it isolates what the receiver spends on
parsing, validation, events and files in a stop-and-wait (or windowed) exchange.

    python benchmarks/baseline_bare_loop.py --listen unix:///tmp/b.sock [--trim-write-echo]
"""

from __future__ import annotations

import argparse
import signal
import struct
import sys

import trio

from gsi.transports import listener_url, open_listeners

RECEIVE_SIZE = 256 * 1024
PIPE = struct.Struct("<II")
U16 = struct.Struct("<H")
U32 = struct.Struct("<I")
NEGOTIATED = struct.Struct("<HHIHHHH")  # counts 1/1, reserved, framework, message
TRIMMED = 80


async def serve_connection(stream: trio.abc.Stream, trim: bool) -> None:
    buf = bytearray()
    packets = getattr(stream, "packet_pipe", False)
    async with stream:
        while data := await stream.receive_some(RECEIVE_SIZE):
            if packets:  # one message per packet: its padding is not the next message
                data = data[:8 + PIPE.unpack_from(data)[1]] if len(data) >= 8 else b""
                trim = False
            buf += data
            out = bytearray()
            pos, end = 0, len(buf)
            while end - pos >= 8:
                msg_end = pos + 8 + PIPE.unpack_from(buf, pos)[1]
                if msg_end > end:
                    break
                if trim and msg_end - pos > TRIMMED and buf[pos + 12] == 7 and \
                        U32.unpack_from(buf, pos + 28)[0] == 1:
                    start = len(out)
                    out += buf[pos:pos + TRIMMED]
                    PIPE.pack_into(out, start, 1, TRIMMED - 8)
                    U16.pack_into(out, start + 18, TRIMMED - 28)
                else:
                    start = len(out)
                    out += buf[pos:msg_end]
                    if buf[pos + 12] == 0:  # NEGOTIATE: choose 3.0 and 1.1
                        U16.pack_into(out, start + 18, 0x10)
                        NEGOTIATED.pack_into(out, start + 28, 1, 1, 0, 3, 0, 1, 1)
                U32.pack_into(out, start + 20, 0)
                out[start + 25] = 0x05
                pos = msg_end
            del buf[:pos]
            if out:
                await stream.send_all(out)


async def run(url: str, trim: bool) -> None:
    """Serve until SIGTERM, then close the listeners (a vmbus-emu:// one removes its
    ring files)."""
    listeners = await open_listeners(url)
    print(f"listening on {listener_url(listeners[0])}", flush=True)

    async def accept(listener: trio.abc.Listener[trio.abc.Stream],
                     nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(serve_connection, stream, trim)

    try:
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(accept, listener, nursery)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    finally:
        for listener in listeners:
            await trio.aclose_forcefully(listener)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="a guest that only answers (benchmark baseline)")
    p.add_argument("--listen", required=True, metavar="URL")
    p.add_argument("--trim-write-echo", action="store_true")
    args = p.parse_args(argv)
    try:
        trio.run(run, args.listen, args.trim_write_echo)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
