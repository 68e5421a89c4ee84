"""Record the checked-in session traces: every PROTOCOL.md section 8 rule and whole copies.

Each scenario runs on one connection against a real ``gsi-receiver --trace DIR``
subprocess with a fresh, empty destination root (prepared by the scenario's ``setup`` where
the rule needs something the protocol cannot create, such as a symlink), checks that every
answer has the status the rule gives, and keeps the receiver's trace as
``tests/traces/<scenario>.trace`` (plus ``<scenario>.setup.json`` when there is a setup).
``tests/test_trace_replay.py`` replays every ``*.trace`` in this folder.

    python tests/traces/make_traces.py              # rewrite every trace here
    python tests/traces/make_traces.py --out DIR    # somewhere else
    python tests/traces/make_traces.py complete_copy pipelined_copy   # some of them

Not recorded: "any failure while handling a request" (a filesystem error or a race with a
local user) has no deterministic trigger over the wire; "file_size above 2**63 - 1" at
START is answered 0x80070070 by the free-space check here, and with
--no-free-space-check this receiver answers S_OK (it does not apply that rule at START
yet), so no trace records it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from gsi import codec
from gsi.constants import CopyFlags, IcMsgType, Operation, Status
from gsi.errors import CopyFailed
from gsi.names import encode_name
from gsi.testing import guest_process
from host_sim import Answer, HostClient, open_host

HERE = Path(__file__).resolve().parent
SUFFIX = ".trace"
SETUP_SUFFIX = ".setup.json"
FORCE, CREATE = CopyFlags.OVER_WRITE, CopyFlags.CREATE_PATH
OK, FAIL = Status.S_OK, Status.E_FAIL


def apply_setup(root: Path, setup: dict[str, Any]) -> None:
    """Prepare a destination root: ``dirs`` (list), ``files`` (path -> text), ``symlinks``
    (path -> target), all relative to ``root``."""
    for d in setup.get("dirs", []):
        (root / d).mkdir(parents=True, exist_ok=True)
    for name, text in setup.get("files", {}).items():
        (root / name).write_text(text)
    for name, target in setup.get("symlinks", {}).items():
        os.symlink(target, root / name)


async def expect(host: HostClient, message: bytes, status: int) -> Answer:
    """Send one request, wait for its answer, check its status."""
    answer = await host.request(message)
    if answer.status != status:
        raise AssertionError(f"{answer.kind}: expected {status:#010x}, got {answer.status:#010x}")
    return answer


async def negotiate(host: HostClient) -> None:
    await host.negotiate()


def start(host: HostClient, name: str, path: str, size: int, flags: int = 0) -> bytes:
    return host.conn.start_copy(file_name=name, path_name=path, flags=CopyFlags(flags),
                                file_size=size)


async def copy(host: HostClient, name: str, path: str, data: bytes, flags: int = 0) -> None:
    """A whole copy, stop-and-wait, every answer S_OK."""
    await expect(host, start(host, name, path, len(data), flags), OK)
    for offset in range(0, len(data), 6144):
        await expect(host, host.conn.write(offset, data[offset:offset + 6144]), OK)
    await expect(host, host.conn.complete(), OK)


def raw(host: HostClient, icmsgtype: int, body: bytes, **fields: Any) -> bytes:
    """Any message: the next transaction id, the given header fields."""
    return host.conn.raw(codec.build_message(icmsgtype=icmsgtype, body=body,
                                             transaction_id=0, **fields))


def raw_start(host: HostClient, file_field: bytes, path_field: bytes, size: int = 1) -> bytes:
    body = codec.build_start_body(file_name_field=file_field, path_name_field=path_field,
                                  copy_flags=CREATE, file_size=size)
    return raw(host, IcMsgType.FCOPY, body, icvermsg=(1, 1))


def raw_write(host: HostClient, offset: int, size: int, data: bytes) -> bytes:
    """A WRITE whose ``size`` field need not match its data."""
    body = (codec.build_fcopy_header(Operation.WRITE_TO_FILE) + bytes(4)
            + codec.WRITE_FIELDS.pack(offset, size) + data)
    return raw(host, IcMsgType.FCOPY, body, icvermsg=(1, 1))


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


Scenario = Callable[[HostClient], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    run: Scenario
    options: dict[str, Any] = field(default_factory=dict)
    setup: dict[str, Any] = field(default_factory=dict)


# -- the scenarios (one connection each) ----------------------------------------------


async def complete_copy(host: HostClient) -> None:
    """A whole small copy as the real host does it: stop-and-wait, full WRITE bodies."""
    await negotiate(host)
    await copy(host, "report.bin", "/incoming/", payload(20000, 1), CREATE)


async def pipelined_copy(host: HostClient) -> None:
    """A window of 8 WRITEs in flight: the replay must pipeline as recorded."""
    await negotiate(host)
    data = payload(50000, 2)
    await expect(host, start(host, "big.bin", "/", len(data)), OK)
    for first in range(0, len(data), 8 * 6144):
        batch = [host.conn.write(o, data[o:o + 6144])
                 for o in range(first, min(first + 8 * 6144, len(data)), 6144)]
        await host.send(b"".join(batch))
        for _ in batch:
            if not (await host.next_answer()).ok:
                raise AssertionError("a pipelined WRITE was refused")
    await expect(host, host.conn.complete(), OK)


async def cancel_copy(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "gone.bin", "/", 10), OK)
    await expect(host, host.conn.write(0, b"12345"), OK)
    await expect(host, host.conn.cancel(), OK)
    await expect(host, host.conn.complete(), FAIL)


async def overwrite(host: HostClient) -> None:
    """An existing target: 0x80070050 without OVER_WRITE, replaced with it."""
    await negotiate(host)
    await copy(host, "f.txt", "/", b"first")
    await expect(host, start(host, "f.txt", "/", 6), Status.ALREADY_EXISTS)
    await copy(host, "f.txt", "/", b"second", FORCE)


async def negotiate_no_common_version(host: HostClient) -> None:
    await expect(host, host.conn.negotiate(((9, 9),), ((9, 9),)), FAIL)
    await expect(host, start(host, "x", "/", 1), FAIL)


async def negotiate_malformed(host: HostClient) -> None:
    """Body shorter than 8 bytes, counts above 100, counts overrunning the body."""
    await expect(host, raw(host, IcMsgType.NEGOTIATE, b"\x01\x00\x01\x00"), FAIL)
    await expect(host, raw(host, IcMsgType.NEGOTIATE, codec.NEGOTIATE_COUNTS.pack(101, 1, 0)
                           + bytes(4 * 102)), FAIL)
    await expect(host, raw(host, IcMsgType.NEGOTIATE, codec.NEGOTIATE_COUNTS.pack(2, 2, 0)
                           + codec.IC_VERSION.pack(3, 0)), FAIL)


async def fcopy_before_negotiate(host: HostClient) -> None:
    await expect(host, start(host, "x", "/", 1), FAIL)
    await expect(host, host.conn.write(0, b"x"), FAIL)


async def start_while_copy_open(host: HostClient) -> None:
    """The open copy is aborted (temp removed), the new START handled."""
    await negotiate(host)
    await expect(host, start(host, "abandoned.bin", "/", 10), OK)
    await expect(host, host.conn.write(0, b"12345"), OK)
    await copy(host, "next.bin", "/", b"abc")
    await expect(host, start(host, "abandoned.bin", "/", 1), OK)  # it was never committed
    await expect(host, host.conn.cancel(), OK)


async def no_open_copy(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, host.conn.write(0, b"x"), FAIL)
    await expect(host, host.conn.complete(), FAIL)


async def unknown_operation_and_type(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, raw(host, IcMsgType.FCOPY, codec.build_fcopy_header(9)),
                 Status.NOT_SUPPORTED)
    await expect(host, raw(host, IcMsgType.VSS, bytes(8)), Status.NOT_SUPPORTED)


async def failed_write_ends_copy(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "f.bin", "/", 10), OK)
    await expect(host, host.conn.write(8, b"123456"), Status.INVALIDARG)
    await expect(host, host.conn.write(0, b"12345678"), FAIL)
    await expect(host, host.conn.complete(), FAIL)


async def invalid_writes(host: HostClient) -> None:
    """size above the maximum fragment, offset + size beyond file_size, body too short;
    a body longer than 52 + size is accepted."""
    await negotiate(host)
    await expect(host, start(host, "f.bin", "/", 10000), OK)
    await expect(host, raw_write(host, 0, 6145, bytes(6144)), Status.INVALIDARG)
    await expect(host, start(host, "f.bin", "/", 10000), OK)
    await expect(host, raw_write(host, 9999, 2, b"ab"), Status.INVALIDARG)
    await expect(host, start(host, "f.bin", "/", 10000), OK)
    await expect(host, raw_write(host, 0, 100, bytes(50)), Status.INVALIDARG)
    await expect(host, start(host, "f.bin", "/", 4), OK)
    await expect(host, raw_write(host, 0, 4, b"abcd" + bytes(100)), OK)
    await expect(host, host.conn.complete(), OK)


async def complete_incomplete(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "f.bin", "/", 100), OK)
    await expect(host, host.conn.write(0, bytes(50)), OK)
    await expect(host, host.conn.complete(), FAIL)


async def bad_names(host: HostClient) -> None:
    """No NUL in 260 units, an unpaired surrogate, an empty file_name, a '/' in it."""
    await negotiate(host)
    root = encode_name("/")
    await expect(host, raw_start(host, b"a\x00" * 260, root), Status.INVALIDARG)
    await expect(host, raw_start(host, b"\x00\xd8" + bytes(518), root), Status.INVALIDARG)
    await expect(host, raw_start(host, encode_name(""), root), Status.INVALIDARG)
    await expect(host, raw_start(host, encode_name("a/b"), root), Status.INVALIDARG)


async def unicode_names(host: HostClient) -> None:
    """Names outside ASCII and outside the BMP (surrogate pairs) are accepted."""
    await negotiate(host)
    await copy(host, "r\u00e9sum\u00e9 \U0001f600.txt", "/\u65e5\u672c/\U0001d518/", b"hi",
               CREATE)


async def dotdot(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "x", "/a/../b/", 1, CREATE), Status.ACCESS_DENIED)
    await expect(host, start(host, "..", "/", 1), Status.ACCESS_DENIED)


async def symlink_on_the_way(host: HostClient) -> None:
    """Followed when it stays inside the root, refused when it leads out."""
    await negotiate(host)
    await copy(host, "f.txt", "/inside/", b"via a symlink")
    await expect(host, start(host, "f.txt", "/escape/", 1), Status.ACCESS_DENIED)


async def target_is_symlink(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "link", "/", 3), Status.ALREADY_EXISTS)
    await copy(host, "link", "/", b"new", FORCE)


async def target_is_directory(host: HostClient) -> None:
    await negotiate(host)
    await copy(host, "x", "/d/", b"x", CREATE)
    await expect(host, start(host, "d", "/", 1), Status.ALREADY_EXISTS)
    await expect(host, start(host, "d", "/", 1, FORCE), Status.ACCESS_DENIED)


async def missing_directory(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "x", "/nope/", 1), Status.PATH_NOT_FOUND)


async def file_size_above_free_space(host: HostClient) -> None:
    await negotiate(host)
    await expect(host, start(host, "x", "/", 1 << 62), Status.DISK_FULL)


async def file_size_above_maximum(host: HostClient) -> None:
    """Recorded with --max-file-size 1000."""
    await negotiate(host)
    await expect(host, start(host, "x", "/", 1001), Status.INVALIDARG)
    await copy(host, "x", "/", bytes(1000))


async def ignored_fields(host: HostClient) -> None:
    """icmsgsize, pad, the service GUIDs, request icflags and versions drive nothing."""
    await negotiate(host)
    body = codec.build_start_body(file_name_field=encode_name("f"),
                                  path_name_field=encode_name("/"), copy_flags=0, file_size=3,
                                  service_id0=b"\x11" * 16, service_id1=b"\x22" * 16)
    await expect(host, raw(host, IcMsgType.FCOPY, body, icflags=0, icmsgsize=7,
                           icvermsg=(9, 9), icverframe=(7, 7)), OK)
    write = bytearray(host.conn.write(0, b"abc"))
    write[8 + 20 + 36:8 + 20 + 40] = b"\xff" * 4  # pad
    await expect(host, bytes(write), OK)
    await expect(host, host.conn.complete(), OK)


async def framing_error(host: HostClient) -> None:
    """A pipe header with flags 2: the receiver answers what came before, then closes."""
    await negotiate(host)
    await host.send(host.conn.complete() + b"\x02\x00\x00\x00\x20\x00\x00\x00" + bytes(32))
    if (await host.next_answer()).status != FAIL:
        raise AssertionError("COMPLETE before the bad frame was not answered 0x80004005")
    try:
        await host.next_answer()
    except CopyFailed:
        return
    raise AssertionError("the receiver did not close after a framing error")


async def trimmed_echo(host: HostClient) -> None:
    """Recorded with --trim-write-echo: WRITE answers carry no data."""
    await negotiate(host)
    await copy(host, "t.bin", "/", payload(7000, 3))


async def linux_status_codes(host: HostClient) -> None:
    """Recorded with --linux-status-codes: only the four codes the Linux daemons use."""
    await negotiate(host)
    await expect(host, start(host, "x", "/nope/", 1), FAIL)
    await expect(host, raw(host, IcMsgType.VSS, bytes(8)), FAIL)


CASES: dict[str, Case] = {
    "complete_copy": Case(complete_copy),
    "pipelined_copy": Case(pipelined_copy),
    "cancel_copy": Case(cancel_copy),
    "overwrite": Case(overwrite),
    "negotiate_no_common_version": Case(negotiate_no_common_version),
    "negotiate_malformed": Case(negotiate_malformed),
    "fcopy_before_negotiate": Case(fcopy_before_negotiate),
    "start_while_copy_open": Case(start_while_copy_open),
    "no_open_copy": Case(no_open_copy),
    "unknown_operation_and_type": Case(unknown_operation_and_type),
    "failed_write_ends_copy": Case(failed_write_ends_copy),
    "invalid_writes": Case(invalid_writes),
    "complete_incomplete": Case(complete_incomplete),
    "bad_names": Case(bad_names),
    "unicode_names": Case(unicode_names),
    "dotdot": Case(dotdot),
    "symlink_on_the_way": Case(symlink_on_the_way, setup={
        "dirs": ["sub"], "symlinks": {"inside": "sub", "escape": "/"}}),
    "target_is_symlink": Case(target_is_symlink, setup={
        "files": {"real.txt": "old"}, "symlinks": {"link": "real.txt"}}),
    "target_is_directory": Case(target_is_directory),
    "missing_directory": Case(missing_directory),
    "file_size_above_free_space": Case(file_size_above_free_space),
    "file_size_above_maximum": Case(file_size_above_maximum, {"max_file_size": 1000}),
    "ignored_fields": Case(ignored_fields),
    "framing_error": Case(framing_error),
    "trimmed_echo": Case(trimmed_echo, {"trim_write_echo": True}),
    "linux_status_codes": Case(linux_status_codes, {"linux_status_codes": True}),
}


async def _drive(url: str, scenario: Scenario) -> None:
    with trio.fail_after(30):
        async with open_host(url) as host:
            await scenario(host)


def record(name: str, out: Path) -> Path:
    """Run one scenario against a fresh ``gsi-receiver --trace``; the trace written."""
    case = CASES[name]
    with tempfile.TemporaryDirectory(prefix="gsi-trace-") as tmp:
        root, traces = Path(tmp) / "root", Path(tmp) / "traces"
        root.mkdir()
        traces.mkdir()
        apply_setup(root, case.setup)
        with guest_process(root, trace=traces, **case.options) as guest:
            trio.run(_drive, guest.url, case.run)
        [recorded] = traces.glob(f"*{SUFFIX}")
        target = out / f"{name}{SUFFIX}"
        shutil.copyfile(recorded, target)
    setup_file = out / f"{name}{SETUP_SUFFIX}"
    if case.setup:
        setup_file.write_text(json.dumps(case.setup, indent=1, sort_keys=True) + "\n")
    else:
        setup_file.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help="scenarios to record (default: all)")
    p.add_argument("--out", type=Path, default=HERE, help="where to write (default: here)")
    args = p.parse_args(argv)
    unknown = set(args.names) - set(CASES)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names or CASES:
        print(record(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
