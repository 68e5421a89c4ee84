"""Scenarios: START / WRITE / COMPLETE / CANCEL sequences and their out-of-order forms
(PROTOCOL.md 5.2 to 5.5, section 8; docs/faults.md)."""

from __future__ import annotations

from gsi import codec
from gsi.constants import CopyFlags, Status
from gsi.names import encode_name as _name

from .model import Context, FsExpect, PerProfile, Scenario, both, gsi_only
from .steps import (
    CREATE,
    cancel,
    complete,
    copy,
    data,
    fcopy_raw,
    negotiate,
    one,
    start,
    write_fields,
    writes,
)

E_FAIL = int(Status.E_FAIL)
INVALIDARG = int(Status.INVALIDARG)
DISK_FULL = int(Status.DISK_FULL)
CANCEL_ANY: PerProfile = {"gsi": 0, "linux": frozenset({0, E_FAIL})}
"""The legacy Linux daemon answers CANCEL with 0, the UIO daemon with 0x80004005."""
LINUX_UNCHECKED = "the Linux daemon checks nothing here (PROTOCOL.md 5.3, 5.4): it writes " \
                  "or commits what it gets"
MAX_OFFSET = (1 << 63) - 1

TWO = data(10000, seed=2)
"""Two stock fragments' worth."""
SMALL = data(300, seed=3)
OTHER = data(200, seed=4)

NOTHING = FsExpect()


def _ignored_fields_start(ctx: Context) -> bytes:
    body = codec.build_start_body(
        file_name_field=_name("f.bin"), path_name_field=_name(ctx.dir),
        copy_flags=CopyFlags.CREATE_PATH | 0xFFF0, file_size=len(SMALL),
        service_id0=b"\x11" * 16, service_id1=b"\x22" * 16)
    return fcopy_raw(ctx, body, icmsgsize=7, icvermsg=(9, 9), icflags=0)


def _ignored_fields_write(ctx: Context) -> bytes:
    out = bytearray(ctx.host.conn.write(0, SMALL))
    out[25] = 0x00  # request icflags
    codec.U16.pack_into(out, codec.ICMSGSIZE_OFFSET, 1)
    codec.U32.pack_into(out, codec.WRITE_FIELDS_OFFSET - 4, 0xDEADBEEF)  # pad
    out[32:64] = b"\x33" * 32  # the two service GUIDs
    return bytes(out)


def _long_body_write(ctx: Context) -> bytes:
    """A WRITE whose body runs 100 bytes past 52 + size (the rest must be ignored)."""
    return fcopy_raw(ctx, codec.build_write_body(offset=0, data=SMALL) + b"\xee" * 100)


SEQUENCES = (
    Scenario(id="copy.basic", title="a copy in stock full-length WRITEs commits byte for "
             "byte", steps=(negotiate(), *copy("f.bin", TWO)),
             fs=both(FsExpect(files={"f.bin": TWO})), rule="5.2-5.4"),
    Scenario(id="copy.trimmed-writes", title="WRITE bodies trimmed to 52 + size are "
             "accepted", steps=(negotiate(), *copy("f.bin", TWO, trimmed=True)),
             fs=both(FsExpect(files={"f.bin": TWO})), rule="section 2"),
    Scenario(id="copy.empty-file", title="a 0-byte copy: START then COMPLETE",
             steps=(negotiate(), start("empty", 0), complete()),
             fs=both(FsExpect(files={"empty": b""})), rule="5.2"),
    Scenario(id="copy.two-files", title="two copies over one connection",
             steps=(negotiate(), *copy("a.bin", SMALL), *copy("b.bin", OTHER)),
             fs=both(FsExpect(files={"a.bin": SMALL, "b.bin": OTHER})), rule="section 2"),
    Scenario(id="copy.out-of-order-writes", title="WRITEs in reverse order still cover the "
             "file", steps=(negotiate(), start("f.bin", len(TWO)),
                            writes(TWO, ranges=[(6000, 10000), (3000, 6000), (0, 3000)],
                                   label="WRITE 3 ranges, last first"), complete()),
             fs=both(FsExpect(files={"f.bin": TWO})), rule="docs/faults.md reorder"),
    Scenario(id="copy.overlapping-writes", title="overlapping and repeated WRITEs that cover "
             "the file", steps=(negotiate(), start("f.bin", len(TWO)),
                                writes(TWO, ranges=[(0, 5000), (4000, 10000), (2000, 2500)],
                                       label="WRITE 3 overlapping ranges"), complete()),
             fs=both(FsExpect(files={"f.bin": TWO})), rule="docs/faults.md overlap"),
    Scenario(id="copy.long-write-body", title="a WRITE body longer than 52 + size: the rest "
             "is ignored", steps=(negotiate(), start("f.bin", len(SMALL)),
                                  one("WRITE 300 B + 100 B junk", _long_body_write),
                                  complete()),
             fs=both(FsExpect(files={"f.bin": SMALL})), rule="section 8"),
    Scenario(id="copy.ignored-fields", title="icmsgsize, icflags, pad, GUIDs, fcopy version "
             "and unknown flag bits are ignored", steps=(
                 negotiate(), one("START odd header fields", _ignored_fields_start),
                 one("WRITE odd header fields", _ignored_fields_write), complete()),
             fs=both(FsExpect(files={"f.bin": SMALL})), rule="section 8"),
    Scenario(id="copy.cancel", title="CANCEL mid-copy: nothing committed, no temp left",
             steps=(negotiate(), start("f.bin", len(TWO)),
                    writes(TWO[:6144], label="WRITE 6144 B"), cancel(CANCEL_ANY)),
             fs=gsi_only(NOTHING), rule="5.5"),
    Scenario(id="copy.cancel-no-copy", title="CANCEL with no copy open", steps=(
        negotiate(), cancel(CANCEL_ANY, check_echo=True)), rule="docs/faults.md cancel"),
    Scenario(id="copy.write-no-copy", title="WRITE with no open copy: 0x80004005",
             steps=(negotiate(), write_fields("WRITE 10 B", offset=0, size=10, data_len=10,
                                              expect=E_FAIL)),
             na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.complete-no-copy", title="COMPLETE with no open copy: 0x80004005",
             steps=(negotiate(), complete(E_FAIL)), na={"linux": LINUX_UNCHECKED},
             rule="section 8"),
    Scenario(id="copy.start-while-open", title="START while a copy is open aborts it; the "
             "new copy proceeds", steps=(negotiate(), start("a.bin", len(TWO)),
                                         writes(TWO[:6144], label="WRITE 6144 B"),
                                         *copy("b.bin", SMALL)),
             fs=gsi_only(FsExpect(files={"b.bin": SMALL})),
             rule="section 8, docs/faults.md abandon"),
    Scenario(id="copy.complete-missing-bytes", title="COMPLETE with bytes missing: "
             "0x80004005, nothing committed, later WRITEs refused", steps=(
                 negotiate(), start("f.bin", len(TWO)), writes(TWO[:6144], label="WRITE 6144 B"),
                 complete(E_FAIL), writes(TWO[6144:], ranges=[(6144, 10000)],
                                          label="WRITE the rest", expect=E_FAIL)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED},
             rule="section 8, docs/faults.md complete-early"),
    Scenario(id="copy.complete-with-hole", title="WRITEs leaving a hole: COMPLETE refused",
             steps=(negotiate(), start("f.bin", 300),
                    writes(SMALL, ranges=[(0, 100), (200, 300)], label="WRITE 0-100, 200-300"),
                    complete(E_FAIL)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.write-beyond-size", title="WRITE past file_size: 0x80070057, the copy "
             "ends", steps=(negotiate(), start("f.bin", 100),
                            writes(SMALL[:200], label="WRITE 200 B into 100", expect=INVALIDARG),
                            writes(SMALL[:100], label="WRITE 100 B", expect=E_FAIL),
                            complete(E_FAIL)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.write-offset-beyond", title="WRITE at an offset past file_size",
             steps=(negotiate(), start("f.bin", 100),
                    write_fields("WRITE 1 B at 100", offset=100, size=1, data_len=1,
                                 expect=INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.write-offset-max", title="WRITE offset + size above 2**63 - 1",
             steps=(negotiate(), start("f.bin", 100),
                    write_fields("WRITE 1 B at 2**63 - 1", offset=MAX_OFFSET, size=1,
                                 data_len=1, expect=INVALIDARG)),
             na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.oversize-fragment", title="WRITE size above the maximum fragment",
             steps=(negotiate(), start("f.bin", 100000),
                    one("WRITE size = max fragment + 1", lambda ctx: _size_field(
                        ctx, ctx.max_fragment + 1), INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.short-write-body", title="WRITE body shorter than 52 + size",
             steps=(negotiate(), start("f.bin", 100),
                    write_fields("WRITE size 100, 50 B of data", offset=0, size=100,
                                 data_len=50, expect=INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.write-header-short", title="WRITE body shorter than its 52-byte "
             "header", steps=(negotiate(), start("f.bin", 100),
                              one("WRITE body 40 B", lambda ctx: fcopy_raw(
                                  ctx, codec.build_write_body(offset=0, data=b"")[:40]),
                                  INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": LINUX_UNCHECKED}, rule="section 8"),
    Scenario(id="copy.start-short-body", title="START body shorter than 1088 bytes",
             steps=(negotiate(), one("START body 600 B", lambda ctx: fcopy_raw(
                 ctx, codec.build_start_body(file_name_field=_name("f.bin"),
                                             path_name_field=_name(ctx.dir), copy_flags=CREATE,
                                             file_size=1)[:600]), INVALIDARG)),
             fs=gsi_only(NOTHING), na={"linux": "the Linux daemon reads past a short body"},
             rule="section 8"),
    Scenario(id="copy.file-size-max", title="START file_size above 2**63 - 1",
             steps=(negotiate(), start("f.bin", MAX_OFFSET + 1, CREATE, INVALIDARG),),
             na={"linux": "the Linux daemon ignores file_size (PROTOCOL.md 5.2)"},
             rule="section 8"),
    Scenario(id="copy.file-size-no-space", title="START file_size above the free space: "
             "refused before any data", steps=(
                 negotiate(), start("f.bin", 1 << 62, CREATE,
                                    frozenset({DISK_FULL, INVALIDARG})),),
             fs=gsi_only(NOTHING),
             na={"linux": "the Linux daemon ignores file_size (PROTOCOL.md 5.2)"},
             rule="section 8 (0x80070057 if above the receiver's maximum)"),
)


def _size_field(ctx: Context, size: int) -> bytes:
    out = bytearray(fcopy_raw(ctx, codec.build_write_body(offset=0, data=b"")))
    codec.U32.pack_into(out, codec.WRITE_FIELDS_OFFSET + 8, size)
    return bytes(out)

