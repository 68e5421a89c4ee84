"""Scenarios: NEGOTIATE, message types and the order of requests (PROTOCOL.md 5.1, 5.6,
section 8)."""

from __future__ import annotations

from gsi import codec
from gsi.constants import IcMsgType, Status

from .model import Context, FsExpect, Scenario, Step, both
from .steps import (
    CREATE,
    complete,
    copy,
    data,
    echo,
    fcopy_raw,
    negotiate,
    negotiate_echo,
    one,
    operation_only,
    start,
    writes,
)

E_FAIL = int(Status.E_FAIL)
NOT_SUPPORTED = int(Status.NOT_SUPPORTED)
_LINUX_NO_CHECK = "the Linux daemon does not validate a NEGOTIATE body (PROTOCOL.md 5.1 " \
                  "calls it malformed without saying the answer)"


def _negotiate_raw(label: str, body: bytes, *, malformed: bool = True) -> Step:
    """A NEGOTIATE with an arbitrary body (counts and versions as given)."""
    def build(ctx: Context) -> bytes:
        return ctx.host.conn.raw(codec.build_message(
            icmsgtype=IcMsgType.NEGOTIATE, body=body, transaction_id=0, icvermsg=(0, 0)),
            kind="negotiate")
    return one(label, build, E_FAIL, echo_rule=negotiate_echo(None, malformed=malformed))


def _counts(nframe: int, nmsg: int, versions: int) -> bytes:
    return codec.NEGOTIATE_COUNTS.pack(nframe, nmsg, 0) + b"".join(
        codec.IC_VERSION.pack(3, 0) for _ in range(versions))


def _message_type(msgtype: int, label: str) -> Step:
    return one(label, lambda ctx: ctx.host.conn.raw(codec.build_message(
        icmsgtype=msgtype, body=bytes(16), transaction_id=0)), NOT_SUPPORTED, echo_rule=echo)


SMALL = data(300, seed=1)

SCENARIOS = (
    Scenario(id="negotiate.ok", title="offered 1.0,3.0/1.1: the answer picks 3.0 and 1.1",
             steps=(negotiate(check_echo=True),), rule="5.1"),
    Scenario(id="negotiate.preference", title="the guest's preference, not the host's "
             "order, picks the version", steps=(
                 negotiate(((3, 0), (1, 0), (2, 0)), ((1, 0), (1, 1)), check_echo=True),),
             rule="5.1"),
    Scenario(id="negotiate.no-common-version", title="no common framework version: "
             "counts 0/0, icmsgsize 0x10, failure", steps=(
                 negotiate(((2, 0), (4, 0)), ((1, 1),), E_FAIL, check_echo=True),),
             rule="section 8"),
    Scenario(id="negotiate.no-common-message-version", title="no common message version",
             steps=(negotiate(((3, 0),), ((1, 0), (9, 9)), E_FAIL, check_echo=True),),
             rule="section 8"),
    Scenario(id="negotiate.empty-body", title="NEGOTIATE with no body: failure, echoed "
             "unchanged", steps=(_negotiate_raw("NEGOTIATE body 0 B", b""),),
             na={"linux": _LINUX_NO_CHECK}, rule="section 8"),
    Scenario(id="negotiate.short-body", title="NEGOTIATE body of 6 bytes: failure, counts "
             "0/0", steps=(_negotiate_raw("NEGOTIATE body 6 B", _counts(1, 1, 0)[:6]),),
             na={"linux": _LINUX_NO_CHECK}, rule="section 8"),
    Scenario(id="negotiate.counts-above-100", title="101 framework versions: malformed",
             steps=(_negotiate_raw("NEGOTIATE 101/1 versions", _counts(101, 1, 102)),),
             na={"linux": _LINUX_NO_CHECK}, rule="section 8"),
    Scenario(id="negotiate.counts-overrun", title="counts that overrun the body: malformed",
             steps=(_negotiate_raw("NEGOTIATE 2/1 versions, 1 present", _counts(2, 1, 1)),),
             na={"linux": _LINUX_NO_CHECK}, rule="section 8"),
    Scenario(id="negotiate.renegotiate", title="a second NEGOTIATE after success is "
             "answered again and copies go on", steps=(
                 negotiate(), negotiate(check_echo=True), *copy("f.bin", SMALL)),
             fs=both(FsExpect(files={"f.bin": SMALL})), rule="5.1"),
    Scenario(id="negotiate.renegotiate-no-common", title="a failing NEGOTIATE after "
             "success is still answered as such", steps=(
                 negotiate(), negotiate(((2, 0),), ((1, 1),), E_FAIL, check_echo=True)),
             rule="section 8"),
    Scenario(id="negotiate.fcopy-first", title="START before any NEGOTIATE: 0x80004005, "
             "nothing created", steps=(start("f.bin", 10, CREATE, E_FAIL),),
             fs={"gsi": FsExpect()},
             na={"linux": "the Linux daemon handles FCOPY without a prior NEGOTIATE"},
             rule="section 8"),
    Scenario(id="negotiate.fcopy-after-failure", title="START after a failed NEGOTIATE: "
             "0x80004005", steps=(negotiate(((2, 0),), ((1, 1),), E_FAIL),
                                  start("f.bin", 10, CREATE, E_FAIL)),
             na={"linux": "the Linux daemon handles FCOPY without a prior NEGOTIATE"},
             rule="section 8"),
    Scenario(id="msgtype.unknown", title="unknown IC message type 9: not supported",
             steps=(negotiate(), _message_type(9, "IC type 9")), rule="section 8, 5.6"),
    Scenario(id="msgtype.heartbeat", title="a heartbeat message on the fcopy channel: not "
             "supported", steps=(negotiate(), _message_type(int(IcMsgType.HEARTBEAT),
                                                            "IC type 1 (heartbeat)")),
             rule="section 8, 5.6"),
    Scenario(id="operation.unknown", title="unknown fcopy operation 7: not supported",
             steps=(negotiate(), operation_only(7, "FCOPY operation 7", NOT_SUPPORTED,
                                                check_echo=True)), rule="section 8"),
    Scenario(id="operation.header-short", title="an fcopy body too short for its operation",
             steps=(negotiate(), one("FCOPY body 2 B", lambda ctx: fcopy_raw(ctx, b"\x00\x00"),
                                     int(Status.INVALIDARG))),
             na={"linux": "the Linux daemon reads past a short body"}, rule="section 8"),
    Scenario(id="echo.copy", title="every answer of a copy is its request echoed with "
             "status and icflags changed", steps=(
                 negotiate(check_echo=True), start("f.bin", len(SMALL), check_echo=True),
                 writes(SMALL, check_echo=True), writes(SMALL[:10], trimmed=True,
                                                        check_echo=True),
                 complete(check_echo=True)), rule="5.6"),
)
