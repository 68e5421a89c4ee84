"""Step builders shared by the catalogue: every request comes from
:class:`host_sim.protocol.HostConnection` (``raw`` for malformed bytes) and the layouts
of :mod:`gsi.codec`; nothing is re-declared here."""

from __future__ import annotations

import random
from collections.abc import Callable

from gsi import codec
from gsi.constants import (
    GUEST_ICFLAGS,
    HOST_ICFLAGS,
    ICFLAGS_OFFSET,
    ICMSG_HDR_END,
    ICMSG_HDR_SIZE,
    STATUS_OFFSET,
    WRITE_HEADER_SIZE,
    CopyFlags,
    IcMsgType,
    Version,
)
from gsi.names import encode_name

from .model import Context, EchoRule, PerProfile, Step

NONE = CopyFlags.NONE
CREATE = CopyFlags.CREATE_PATH
FORCE = CopyFlags.OVER_WRITE
_WRITE_ECHO_LEN = ICMSG_HDR_END + WRITE_HEADER_SIZE


def data(size: int, seed: int) -> bytes:
    """Deterministic file content."""
    return random.Random(seed).randbytes(size)


# -- echo rules (PROTOCOL.md 5.6, 5.1 and section 8) ------------------------------------

def echo(request: bytes, status: int) -> bytes:
    """The request with ``status`` and ``icflags`` (0x05) changed."""
    out = bytearray(request)
    codec.U32.pack_into(out, STATUS_OFFSET, status)
    out[ICFLAGS_OFFSET] = GUEST_ICFLAGS
    return bytes(out)


def trimmed_write_echo(expected: bytes) -> bytes:
    """A full WRITE echo trimmed to its 52-byte header (stream transports may do it)."""
    out = bytearray(expected[:_WRITE_ECHO_LEN])
    codec.U32.pack_into(out, codec.MSGSIZE_OFFSET, ICMSG_HDR_SIZE + WRITE_HEADER_SIZE)
    codec.U16.pack_into(out, codec.ICMSGSIZE_OFFSET, WRITE_HEADER_SIZE)
    return bytes(out)


def negotiate_echo(chosen: tuple[Version, Version] | None, *,
                   malformed: bool = False) -> EchoRule:
    """The negotiate edits: counts 1/1, the chosen versions and icmsgsize 0x10 on success;
    counts 0/0 (where the body has room) on failure, icmsgsize 0x10 unless malformed."""
    def rule(request: bytes, status: int) -> bytes:
        out = bytearray(echo(request, status))
        body = ICMSG_HDR_END
        if chosen is not None:
            codec.U16.pack_into(out, codec.ICMSGSIZE_OFFSET, 0x10)
            codec.NEGOTIATE_VERCNT.pack_into(out, body, 1, 1)
            codec.IC_VERSION.pack_into(out, body + 8, *chosen[0])
            codec.IC_VERSION.pack_into(out, body + 12, *chosen[1])
        elif len(out) - body >= codec.NEGOTIATE_VERCNT.size:
            codec.NEGOTIATE_VERCNT.pack_into(out, body, 0, 0)
            if not malformed:
                codec.U16.pack_into(out, codec.ICMSGSIZE_OFFSET, 0x10)
        return bytes(out)
    return rule


CHOSEN: tuple[Version, Version] = ((3, 0), (1, 1))


# -- requests ---------------------------------------------------------------------------

def one(label: str, build: Callable[[Context], bytes], expect: PerProfile = 0, *,
        echo_rule: EchoRule | None = None, wait: bool = True) -> Step:
    return Step(label=label, build=lambda ctx: [build(ctx)], expect=expect, echo=echo_rule,
                wait=wait)


def negotiate(framework: tuple[Version, ...] = ((1, 0), (3, 0)),
              message: tuple[Version, ...] = ((1, 1),), expect: PerProfile = 0, *,
              check_echo: bool = False, wait: bool = True) -> Step:
    def show(versions: tuple[Version, ...]) -> str:
        return ",".join(f"{a}.{b}" for a, b in versions)
    rule = None
    if check_echo:
        rule = negotiate_echo(CHOSEN if expect == 0 else None)
    return one(f"NEGOTIATE {show(framework)}/{show(message)}",
               lambda ctx: ctx.host.conn.negotiate(framework, message), expect,
               echo_rule=rule, wait=wait)


def start(name: str, size: int, flags: CopyFlags = CREATE, expect: PerProfile = 0, *,
          sub: str = "", check_echo: bool = False, wait: bool = True) -> Step:
    """START ``name`` in the scenario directory (``sub`` appended to it)."""
    shown = "|".join(f.name or "" for f in CopyFlags if f & flags and f.name) or "0"
    return one(f"START {sub}{name!r} {size} B flags={shown}",
               lambda ctx: ctx.host.conn.start_copy(
                   file_name=name, path_name=ctx.dir + sub, flags=flags, file_size=size),
               expect, echo_rule=echo if check_echo else None, wait=wait)


NameField = Callable[[Context], bytes]
"""Builds one 520-byte name field when the step runs."""


def start_raw(label: str, file_name: NameField, path_name: NameField, *,
              flags: int = CREATE, size: int = 1, expect: PerProfile = 0) -> Step:
    """START from already-encoded 520-byte name fields (for names no encoder makes)."""
    def build(ctx: Context) -> bytes:
        return fcopy_raw(ctx, codec.build_start_body(
            file_name_field=file_name(ctx), path_name_field=path_name(ctx), copy_flags=flags,
            file_size=size))
    return one(label, build, expect)


def fcopy_raw(ctx: Context, body: bytes, *, icmsgsize: int | None = None,
              icvermsg: Version = codec.DEFAULT_FCOPY_VERSION,
              icflags: int = HOST_ICFLAGS) -> bytes:
    """An FCOPY message around ``body``, sent as raw bytes (header fields as given)."""
    return ctx.host.conn.raw(codec.build_message(
        icmsgtype=IcMsgType.FCOPY, body=body, transaction_id=0, icmsgsize=icmsgsize,
        icvermsg=icvermsg, icflags=icflags))


def dir_field(ctx: Context, sub: str = "") -> bytes:
    return encode_name(ctx.dir + sub)


def writes(content: bytes, *, ranges: list[tuple[int, int]] | None = None,
           trimmed: bool = False, label: str | None = None, expect: PerProfile = 0,
           check_echo: bool = False) -> Step:
    """WRITEs of ``content``: in fragments from 0, or the given (start, stop) ranges."""
    def build(ctx: Context) -> list[bytes]:
        conn = ctx.host.conn
        spans = ranges if ranges is not None else [
            (o, min(o + ctx.fragment, len(content))) for o in range(0, len(content),
                                                                     ctx.fragment)]
        saved, conn.full_write_body = conn.full_write_body, not trimmed
        try:
            out = []
            for lo, hi in spans:
                for o in range(lo, hi, ctx.fragment):
                    out.append(conn.write(o, content[o:min(o + ctx.fragment, hi)]))
            return out
        finally:
            conn.full_write_body = saved
    what = label or (f"WRITE {len(content)} B" + (" trimmed" if trimmed else ""))
    return Step(label=what, build=build, expect=expect, echo=echo if check_echo else None)


def write_fields(label: str, *, offset: int, size: int, data_len: int,
                 expect: PerProfile, wait: bool = True) -> Step:
    """A WRITE whose ``size`` field need not match the data it carries (trimmed body)."""
    def build(ctx: Context) -> bytes:
        body = codec.build_write_body(offset=offset, data=bytes(data_len))
        out = bytearray(fcopy_raw(ctx, body))
        codec.U32.pack_into(out, codec.WRITE_FIELDS_OFFSET + 8, size)
        return bytes(out)
    return one(label, build, expect, wait=wait)


def complete(expect: PerProfile = 0, *, check_echo: bool = False) -> Step:
    return one("COMPLETE", lambda ctx: ctx.host.conn.complete(), expect,
               echo_rule=echo if check_echo else None)


def cancel(expect: PerProfile = 0, *, check_echo: bool = False) -> Step:
    return one("CANCEL", lambda ctx: ctx.host.conn.cancel(), expect,
               echo_rule=echo if check_echo else None)


def copy(name: str, content: bytes, flags: CopyFlags = CREATE, *, sub: str = "",
         trimmed: bool = False) -> tuple[Step, ...]:
    """START, the WRITEs, COMPLETE: a whole successful copy."""
    return (start(name, len(content), flags, sub=sub), writes(content, trimmed=trimmed),
            complete())


def operation_only(op: int, label: str, expect: PerProfile, *,
                   check_echo: bool = False) -> Step:
    return one(label, lambda ctx: fcopy_raw(ctx, codec.build_fcopy_header(op)), expect,
               echo_rule=echo if check_echo else None)

