"""Scenarios: stream framing (PROTOCOL.md section 2) and the faults of docs/faults.md that
have a defined guest answer."""

from __future__ import annotations

import random
from collections.abc import Callable

from gsi import codec
from gsi.constants import PIPE_FLAG_DATA, CopyFlags, IcMsgType, Operation, Status, max_msgsize_for

from .model import DROPPED, Context, FsExpect, Scenario, Step, both, gsi_only
from .steps import complete, data, negotiate, negotiate_echo, one, start, writes

TWO = data(10000, seed=8)
E_FAIL = int(Status.E_FAIL)
NOTHING = FsExpect()


def _pipe_header(flags: int, msgsize: object) -> Step:
    """Just a pipe header: a reader decides on these 8 bytes, before any body."""
    shown = "MAX+1" if callable(msgsize) else str(msgsize)

    def build(ctx: Context) -> list[bytes]:
        size = msgsize(ctx) if callable(msgsize) else msgsize
        return [ctx.host.conn.raw(codec.PIPE.pack(flags, size))]
    return Step(label=f"pipe header flags={flags} msgsize={shown}", build=build,
                expect=DROPPED)


def _above_max(ctx: Context) -> int:
    return max_msgsize_for(ctx.max_fragment) + 1


def _pipelined_open_copy() -> tuple[Step, ...]:
    """NEGOTIATE and START sent without waiting: their answers come before the close."""
    return (negotiate(wait=False), start("f.bin", len(TWO), wait=False))


def _half_write(ctx: Context) -> list[bytes]:
    request = ctx.host.conn.write(0, TWO[:ctx.fragment])
    return [request[:len(request) // 2]]


def _garbage(ctx: Context) -> list[bytes]:
    blob = bytearray(random.Random(12).randbytes(64))
    blob[0] = 0x7E  # pipe flags: never 1
    return [ctx.host.conn.raw(bytes(blob))]


def _write_as(operation: int) -> Callable[[Context], bytes]:
    """The next WRITE of TWO with its operation field corrupted."""
    def build(ctx: Context) -> bytes:
        out = bytearray(ctx.host.conn.write(ctx.fragment, TWO[ctx.fragment:2 * ctx.fragment]))
        codec.U32.pack_into(out, codec.OPERATION_OFFSET, operation)
        return bytes(out)
    return build


def _start_as_negotiate(ctx: Context) -> bytes:
    out = bytearray(ctx.host.conn.start_copy(file_name="f.bin", path_name=ctx.dir,
                                             flags=CopyFlags.CREATE_PATH, file_size=10))
    codec.U16.pack_into(out, codec.PEEK_OFFSET, IcMsgType.NEGOTIATE)
    return bytes(out)


def _framing(id: str, title: str, header: Step) -> Scenario:
    return Scenario(id=id, title=title, steps=(*_pipelined_open_copy(), header),
                    fs=gsi_only(NOTHING), rule="section 2")


def _dribble(ctx: Context) -> list[bytes]:
    return [ctx.host.conn.negotiate()]


FRAMING = (
    _framing("framing.pipe-flags-0", "pipe flags 0: the connection is dropped; earlier "
             "requests are answered first", _pipe_header(0, 20)),
    _framing("framing.pipe-flags-2", "pipe flags 2: dropped", _pipe_header(2, 20)),
    _framing("framing.msgsize-below-20", "msgsize 19: dropped",
             _pipe_header(PIPE_FLAG_DATA, 19)),
    _framing("framing.msgsize-zero", "msgsize 0: dropped", _pipe_header(PIPE_FLAG_DATA, 0)),
    _framing("framing.msgsize-above-max", "msgsize above the framing maximum: dropped "
             "before the body is awaited", _pipe_header(PIPE_FLAG_DATA, _above_max)),
    _framing("framing.msgsize-huge", "msgsize 0xFFFFFFFF: dropped at once",
             _pipe_header(PIPE_FLAG_DATA, 0xFFFFFFFF)),
    Scenario(id="framing.pipelined", title="a whole copy sent as one window, answered in "
             "order", steps=(negotiate(wait=False), start("f.bin", len(TWO), wait=False),
                             Step(label="WRITE 10000 B", build=writes(TWO).build, wait=False),
                             complete()),
             fs=both(FsExpect(files={"f.bin": TWO})), rule="section 2"),
    Scenario(id="framing.byte-by-byte", title="a NEGOTIATE arriving one byte at a time",
             steps=(Step(label="NEGOTIATE in 1-byte sends", build=_dribble, chunk=1),),
             rule="section 2"),
)

FAULTS = (
    Scenario(id="fault.disconnect-mid-copy", title="the host closes mid-copy: nothing "
             "committed, no temp left", steps=(
                 negotiate(), start("f.bin", len(TWO)), writes(TWO[:6144], label="WRITE 6144 B"),
                 Step(label="close", build=lambda ctx: [b""], action="close")),
             fs=gsi_only(NOTHING), rule="docs/faults.md disconnect"),
    Scenario(id="fault.disconnect-mid-frame", title="the host closes inside a WRITE",
             steps=(negotiate(), start("f.bin", len(TWO)),
                    Step(label="half a WRITE, close", build=_half_write, action="close")),
             fs=gsi_only(NOTHING), rule="docs/faults.md disconnect"),
    Scenario(id="fault.truncate", title="half a WRITE, then end of stream: earlier "
             "requests answered, no answer to the half", steps=(
                 negotiate(), start("f.bin", len(TWO)),
                 Step(label="half a WRITE, EOF", build=_half_write, action="eof")),
             fs=gsi_only(NOTHING), rule="docs/faults.md truncate"),
    Scenario(id="fault.garbage", title="64 random bytes mid-copy: dropped without an "
             "answer", steps=(*_pipelined_open_copy(),
                              Step(label="64 B garbage", build=_garbage, expect=DROPPED)),
             fs=gsi_only(NOTHING), rule="docs/faults.md garbage"),
    Scenario(id="fault.write-as-complete", title="a WRITE whose operation reads COMPLETE "
             "while bytes are missing: 0x80004005, nothing committed", steps=(
                 negotiate(), start("f.bin", len(TWO)),
                 writes(TWO[:6144], label="WRITE 6144 B"),
                 one("WRITE with operation 2", _write_as(Operation.COMPLETE_FCOPY), E_FAIL),
                 complete(E_FAIL)),
             fs=gsi_only(NOTHING), na={"linux": "the Linux daemon commits on any COMPLETE"},
             rule="docs/faults.md corrupt operation"),
    Scenario(id="fault.write-as-start", title="a WRITE whose operation reads START: an empty "
             "name (0x80070057), the open copy aborted", steps=(
                 negotiate(), start("f.bin", len(TWO)),
                 writes(TWO[:6144], label="WRITE 6144 B"),
                 one("WRITE with operation 0", _write_as(Operation.START_FILE_COPY),
                     int(Status.INVALIDARG)), complete(E_FAIL)),
             fs=gsi_only(NOTHING), na={"linux": "the Linux daemon does not check names"},
             rule="docs/faults.md corrupt operation"),
    Scenario(id="fault.start-as-negotiate", title="a START whose icmsgtype reads NEGOTIATE: "
             "read as one (no common version)", steps=(
                 negotiate(), one("START with icmsgtype 0", _start_as_negotiate, E_FAIL,
                                  echo_rule=negotiate_echo(None))),
             fs=both(NOTHING), rule="docs/faults.md corrupt icmsgtype"),
)
