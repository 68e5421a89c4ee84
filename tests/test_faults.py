"""Fault injection (host_sim.faults) against a real receiver over a real Unix socket:
every fault kind gets the receiver behaviour docs/faults.md promises, and every limit of
ReceiverConfig works (connections, idle and send timeouts, file size, framing, ranges).

Every test checks the same hygiene afterwards: once the receiver has dropped the
connection no temp file is left, and the target holds its old content unless the
guest answered a COMPLETE with 0.
"""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from fault_helpers import content, sessions_gone, temp_files

from gsi.constants import CopyFlags, Status
from gsi.testing import Guest, open_guest
from gsi.transports import connect
from host_sim import Answer, HostConnection, copy_vm_file
from host_sim.fault_plan import (
    FIELDS,
    Corrupt,
    Disconnect,
    FaultPlan,
    FaultReport,
    FaultSpecError,
    Idle,
    Point,
    Stall,
    parse_fault,
)
from host_sim.faults import READ_BLOCK, FaultyHost, faulty_copy

IDLE = 0.5
"""The receivers' idle timeout in these tests, seconds."""
FRAG = 6144
DATA = random.Random(4).randbytes(5 * FRAG + 1000)
"""Six WRITEs: write:0 .. write:5 (the last one 1000 bytes)."""
OLD = b"the old content, which a failed copy must leave alone\n"

OK = Status.S_OK
E_FAIL = Status.E_FAIL
INVALIDARG = Status.INVALIDARG
NOT_SUPPORTED = Status.NOT_SUPPORTED


@pytest.fixture
async def guest() -> AsyncIterator[Guest]:
    async with open_guest(idle_timeout=IDLE) as g:
        yield g


async def run(guest: Guest, *specs: str, window: int = 1, data: bytes = DATA,
              old: bytes | None = OLD, timeout: float = 15.0,
              fragment_size: int = FRAG) -> FaultReport:
    """One faulty copy to /d/f (with -Force over ``old``), then wait until the receiver
    has dropped the connection and check that no temp file is left."""
    target = guest.path("/d/f")
    target.parent.mkdir(exist_ok=True)
    if old is not None:
        target.write_bytes(old)
    with trio.fail_after(timeout):
        report = await faulty_copy(guest.url, data, "/d", name="f", force=True,
                                   plan=FaultPlan.parse(specs), window=window,
                                   fragment_size=fragment_size, answer_timeout=5.0)
    await sessions_gone(guest)
    assert temp_files(guest.root) == []
    return report


# -- faults that the receiver absorbs: the copy commits, byte for byte ----------------

ABSORBED = [
    [],
    ["duplicate:at=0"],
    ["duplicate:at=5"],
    ["reorder:at=0"],
    ["reorder:at=4"],
    ["reorder:at=1", "reorder:at=3", "duplicate:at=2"],
    ["overlap:at=2,bytes=100"],
    ["overlap:at=0,bytes=6144"],
    ["overlap:at=5,bytes=1"],
    ["stall:at=3,seconds=0.05"],
    ["stall:at=complete,seconds=0.05"],
    ["corrupt:at=write:1,field=icmsgsize,value=0"],
    ["corrupt:at=start,field=icflags,value=0"],
    ["corrupt:at=complete,field=transaction-id,value=+9"],
    ["corrupt:at=write:5,field=size,value=-500"],  # fewer bytes: re-sent below
    ["idle:connections=2,seconds=0.05"],
    ["noread:at=0"],
    ["noread:at=start,seconds=0.05"],
]


@pytest.mark.parametrize("window", [1, 4])
@pytest.mark.parametrize("specs", ABSORBED, ids=lambda s: " ".join(s) or "none")
async def test_absorbed_faults_commit(guest: Guest, specs: list[str], window: int) -> None:
    if specs == ["corrupt:at=write:5,field=size,value=-500"]:
        # The last WRITE then covers 500 of its 1000 bytes: a duplicate of it (sent
        # after, intact) covers the rest, so the copy commits with the right bytes.
        specs = ["duplicate:at=5", *specs]
    report = await run(guest, *specs, window=window)
    assert report.outcome == "committed", report
    assert report.committed is True
    assert content(guest.path("/d/f")) == DATA
    assert all(a.status == OK for a in report.answers), report
    assert set(report.applied) == {parse_fault(s).spec() for s in specs}


async def test_a_file_source_is_read_right_across_blocks(guest: Guest, tmp_path: Path) -> None:
    """A file is read a block at a time; WRITEs out of order, overlapping or repeated
    across the edges of blocks still carry the right bytes."""
    data = random.Random(7).randbytes(2 * READ_BLOCK + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    edge = READ_BLOCK // FRAG  # this WRITE straddles the end of the first block
    specs = [f"reorder:at=write:{edge}", f"overlap:at=write:{edge + 1},bytes={2 * FRAG}",
             f"duplicate:at=write:{2 * edge}", "reorder:at=write:0"]
    with trio.fail_after(30):
        report = await faulty_copy(guest.url, source, "/d", create_full_path=True, window=8,
                                   plan=FaultPlan.parse(specs), fragment_size=FRAG)
    assert report.outcome == "committed", report
    assert set(report.applied) == {parse_fault(s).spec() for s in specs}
    assert content(guest.path("/d/big.bin")) == data


# -- faults the receiver refuses: the copy ends, the old file stays --------------------

REFUSED: list[tuple[list[str], str, dict[str, int]]] = [
    # specs, outcome, {point: status}
    (["disconnect:bytes=20000"], "host-closed", {"start": OK}),
    (["disconnect:messages=4"], "host-closed", {"start": OK}),
    (["disconnect:at=complete"], "host-closed", {"start": OK}),
    (["cancel:at=3"], "cancelled", {"write:2": OK}),
    (["cancel:at=complete"], "cancelled", {"write:5": OK}),
    (["cancel:at=start"], "cancelled", {}),
    (["complete-early:at=3"], "refused", {"write:2": OK, "write:3": E_FAIL}),
    (["complete-early:at=start"], "refused", {"start": E_FAIL}),
    (["corrupt:at=write:2,field=size,value=max"], "refused", {"write:2": INVALIDARG}),
    (["corrupt:at=write:2,field=size,value=6145"], "refused", {"write:2": INVALIDARG}),
    (["corrupt:at=write:5,field=size,value=+1"], "refused", {"write:5": INVALIDARG}),
    (["corrupt:at=write:2,field=offset,value=max"], "refused", {"write:2": INVALIDARG}),
    (["corrupt:at=write:0,field=offset,value=30721"], "refused", {"write:0": INVALIDARG}),
    (["corrupt:at=write:1,field=operation,value=7"], "refused", {"write:1": NOT_SUPPORTED}),
    (["corrupt:at=write:1,field=operation,value=2"], "refused", {"write:1": E_FAIL}),
    (["corrupt:at=complete,field=operation,value=9"], "refused", {"complete": NOT_SUPPORTED}),
    (["corrupt:at=start,field=operation,value=1"], "refused", {"start": E_FAIL}),
    (["corrupt:at=start,field=file-size,value=+1"], "refused", {"complete": E_FAIL}),
    (["corrupt:at=start,field=file-size,value=-1"], "refused", {"write:5": INVALIDARG}),
    (["corrupt:at=start,field=icmsgtype,value=5"], "refused", {"start": NOT_SUPPORTED}),
    (["corrupt:at=negotiate,field=frame-count,value=101"], "refused", {"negotiate": E_FAIL}),
    (["corrupt:at=negotiate,field=msg-count,value=40"], "refused", {"negotiate": E_FAIL}),
    (["corrupt:at=negotiate,field=frame-count,value=0"], "refused", {"negotiate": E_FAIL}),
    (["corrupt:at=negotiate,field=frame-count,value=101", "keep-going"], "refused",
     {"negotiate": E_FAIL, "start": E_FAIL, "complete": E_FAIL}),
    (["corrupt:at=write:1,field=size,value=max", "keep-going"], "refused",
     {"write:0": OK, "write:1": INVALIDARG, "write:2": E_FAIL, "write:5": E_FAIL,
      "complete": E_FAIL}),
    (["corrupt:at=write:1,field=msgsize,value=max"], "guest-closed", {"write:0": OK}),
    (["corrupt:at=write:1,field=msgsize,value=19"], "guest-closed", {"write:0": OK}),
    (["corrupt:at=write:1,field=msgsize,value=+6224"], "guest-closed", {"write:0": OK}),
    (["corrupt:at=write:1,field=pipe-flags,value=2"], "guest-closed", {"write:0": OK}),
    (["garbage:at=start,bytes=3000,seed=1"], "host-closed", {"negotiate": OK}),
    (["garbage:at=write:2,bytes=100000,seed=2"], "host-closed", {"write:1": OK}),
    (["truncate:at=write:2,keep=100"], "host-closed", {"write:1": OK}),
    (["truncate:at=complete"], "host-closed", {"write:5": OK}),
    (["truncate:at=start,keep=7"], "host-closed", {}),
    (["abandon:at=3"], "abandoned", {"write:2": OK}),
    (["stall:at=2,seconds=1.2"], "guest-closed", {"write:1": OK}),
]


@pytest.mark.parametrize("window", [1, 3])
@pytest.mark.parametrize(("specs", "outcome", "statuses"), REFUSED,
                         ids=[" ".join(case[0]) for case in REFUSED])
async def test_refused_faults_leave_the_old_file(guest: Guest, specs: list[str], outcome: str,
                                                 statuses: dict[str, int], window: int) -> None:
    report = await run(guest, *specs, window=window)
    assert report.outcome == outcome, report
    assert report.committed is False, report
    assert content(guest.path("/d/f")) == OLD
    for point, status in statuses.items():
        assert report.status(point) == status, (point, report)
    assert set(report.applied) == {parse_fault(s).spec() for s in specs}, report
    if outcome == "cancelled":
        assert report.statuses("cancel") == [OK]
    if outcome in ("guest-closed", "host-closed") and not specs[0].startswith("disconnect"):
        assert report.guest_closed, report


async def test_refused_fault_leaves_an_absent_target_absent(guest: Guest) -> None:
    report = await run(guest, "disconnect:bytes=15000", old=None)
    assert report.outcome == "host-closed"
    assert not guest.path("/d/f").exists()


async def test_stall_shorter_than_idle_timeout_is_waited_for(guest: Guest) -> None:
    started = trio.current_time()
    report = await run(guest, "stall:at=1,seconds=0.3", "stall:at=complete,seconds=0.3")
    assert trio.current_time() - started >= 0.6
    assert report.outcome == "committed"
    assert content(guest.path("/d/f")) == DATA


async def test_stall_longer_than_idle_timeout_closes_at_the_timeout(guest: Guest) -> None:
    started = trio.current_time()
    report = await run(guest, "stall:at=1,seconds=3")
    elapsed = trio.current_time() - started
    assert report.outcome == "guest-closed"
    assert IDLE <= elapsed < IDLE + 2  # the guest closed at its idle timeout


async def test_abandoned_copy_is_dropped_by_the_next_start() -> None:
    """Section 8: START while a copy is open aborts it (temp removed) and goes on. Named
    temp files, so that the open copy's temp can be seen."""
    async with open_guest(temp_files="named") as guest:
        await _abandoned_copy_is_dropped(guest)


async def _abandoned_copy_is_dropped(guest: Guest) -> None:
    guest.path("/d").mkdir()
    async with FaultyHost(guest.url, window=2, answer_timeout=5) as host:
        first = await host.copy(b"x" * 50000, "/d", name="first",
                                plan=[parse_fault("abandon:at=4")])
        assert first.outcome == "abandoned"
        assert len(temp_files(guest.root)) == 1  # the open copy's temp file
        second = await host.copy(DATA, "/d", name="second")
        assert second.outcome == "committed"
        assert host.connected
    await sessions_gone(guest)
    assert not guest.path("/d/first").exists()
    assert content(guest.path("/d/second")) == DATA
    assert temp_files(guest.root) == []


async def test_copy_selector_applies_a_fault_to_one_copy_only(guest: Guest) -> None:
    guest.path("/d").mkdir()
    plan = FaultPlan.parse(["complete-early:at=1,copy=1"])
    async with FaultyHost(guest.url, answer_timeout=5) as host:
        reports = [await host.copy(DATA, "/d", name=f"f{i}", plan=plan) for i in range(3)]
    assert [r.outcome for r in reports] == ["committed", "refused", "committed"]
    assert [r.applied for r in reports] == [(), ("complete-early:at=write:1,copy=1",), ()]


async def test_unreached_point_is_reported_as_skipped(guest: Guest) -> None:
    report = await run(guest, "cancel:at=40", "disconnect:bytes=999999999")
    assert report.outcome == "committed"
    assert report.applied == ()
    assert report.skipped == ("cancel:at=write:40", "disconnect:bytes=999999999")


async def test_idle_connections_time_out() -> None:
    async with open_guest(idle_timeout=IDLE, max_connections=6) as guest:
        report = await run(guest, "idle:connections=4,seconds=10", "stall:at=2,seconds=0.1")
    assert report.outcome == "committed"
    assert len(report.idle) == 4
    assert all(r.closed_by_guest for r in report.idle), report.idle
    assert all(IDLE * 0.9 <= r.seconds < IDLE + 3 for r in report.idle), report.idle


async def test_idle_connections_beyond_max_connections_evict_each_other() -> None:
    async with open_guest(idle_timeout=30, max_connections=3) as guest:
        # The copy's own connection (answered before: a first copy) plus 2 idle ones fill
        # the 3 slots; each of the 3 other idle ones evicts the bare connection that
        # waited the longest, never the copy's. The host gives up on the 2 left after 1 s.
        guest.path("/d").mkdir()
        async with FaultyHost(guest.url, answer_timeout=5) as host:
            with trio.fail_after(15):
                first = await host.copy(DATA, "/d", name="first")
                report = await host.copy(DATA, "/d", name="f", plan=FaultPlan.parse(
                    ["idle:connections=5,seconds=1", "stall:at=1,seconds=0.5"]))
        assert first.outcome == "committed"
        assert guest.receiver.stats.evicted_connections == 3
        assert guest.receiver.stats.refused_connections == 0
    assert report.outcome == "committed"
    refused = [r for r in report.idle if r.closed_by_guest]
    held = [r for r in report.idle if not r.closed_by_guest]
    assert len(refused) == 3 and all(r.seconds < 0.5 for r in refused), report.idle
    assert len(held) == 2 and all(r.seconds >= 0.9 for r in held), report.idle


async def test_host_that_stops_reading_is_dropped_after_the_idle_timeout() -> None:
    """The receiver's answers fill the socket buffers; its send may not block forever."""
    big = random.Random(5).randbytes(6 << 20)
    async with open_guest(idle_timeout=IDLE) as guest:
        started = trio.current_time()
        with trio.fail_after(10):
            report = await faulty_copy(guest.url, big, "/", name="big",
                                       plan=[parse_fault("noread:at=0")], answer_timeout=5)
        elapsed = trio.current_time() - started
        await sessions_gone(guest)
        assert temp_files(guest.root) == []
        assert not guest.path("/big").exists()
    assert report.outcome == "guest-closed", report
    assert elapsed < IDLE + 3


# -- limits -------------------------------------------------------------------------------


async def _negotiated(url: str) -> tuple[trio.abc.HalfCloseableStream, HostConnection]:
    stream = await connect(url)
    host = HostConnection()
    await stream.send_all(host.negotiate())
    host.receive_data(await stream.receive_some(1024))
    answer = host.next_answer()
    assert isinstance(answer, Answer) and answer.ok
    return stream, host


async def _start(stream: trio.abc.Stream, host: HostConnection, name: str) -> None:
    await stream.send_all(host.start_copy(file_name=name, path_name="/", flags=CopyFlags.NONE,
                                          file_size=1))
    while not isinstance(answer := host.next_answer(), Answer):
        host.receive_data(await stream.receive_some(4096))
    assert answer.ok, answer


async def test_max_connections_evicts_the_longest_idle_then_refuses() -> None:
    async with open_guest(max_connections=2, idle_timeout=30) as guest:
        with trio.fail_after(10):
            a, _ = await _negotiated(guest.url)
            b, hb = await _negotiated(guest.url)
            c, hc = await _negotiated(guest.url)  # evicts a, idle the longest
            assert await a.receive_some(1024) == b""
            assert guest.receiver.stats.evicted_connections == 1
            await sessions_gone(guest, keep=2)
            await _start(b, hb, "b")  # both slots now hold an open copy: none is evicted
            await _start(c, hc, "c")
            extra = await connect(guest.url)
            assert await extra.receive_some(1024) == b""  # closed at once, not queued
            await extra.aclose()
            assert guest.receiver.stats.refused_connections == 1
            await b.aclose()
            await sessions_gone(guest, keep=1)
            d, _ = await _negotiated(guest.url)  # the freed slot serves again
            for s in (a, c, d):
                await s.aclose()


async def test_idle_timeout_between_copies(guest: Guest, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(DATA)
    async with FaultyHost(guest.url) as host:
        report = await host.copy(source, "/", name="one")
        assert report.outcome == "committed"
        started = trio.current_time()
        with trio.fail_after(IDLE + 5):
            await sessions_gone(guest, timeout=IDLE + 5)
        # Real time on a loaded machine: the exact bounds are test_session's.
        assert IDLE * 0.9 <= trio.current_time() - started < IDLE + 2
        later = await host.copy(source, "/", name="two")
    assert later.outcome == "guest-closed"  # the channel had been closed by the guest


async def test_max_file_size_is_refused_at_start() -> None:
    async with open_guest(max_file_size=len(DATA) - 1) as guest:
        report = await run(guest, old=OLD)
        assert report.status("start") == INVALIDARG
        assert report.outcome == "refused"
        assert content(guest.path("/d/f")) == OLD
        small = await run(guest, data=DATA[:-1])
        assert small.outcome == "committed"


async def test_framing_maximum_follows_max_fragment(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.write_bytes(DATA * 4)
    async with open_guest(max_fragment=65536) as guest:
        with trio.fail_after(10):
            await copy_vm_file(guest.url, source, "/", name="ok", fragment_size=65536)
            assert content(guest.path("/ok")) == DATA * 4
            # One byte more per fragment: the first WRITE's msgsize is above the maximum.
            report = await faulty_copy(guest.url, source, "/", name="no",
                                       fragment_size=65537, answer_timeout=5)
        assert report.outcome == "guest-closed"
        assert report.status("start") == OK
        await sessions_gone(guest)
        assert not guest.path("/no").exists() and temp_files(guest.root) == []


@pytest.mark.parametrize(("max_ranges", "outcome"), [(1, "refused"), (2, "committed")])
async def test_max_ranges_bounds_out_of_order_writes(max_ranges: int, outcome: str) -> None:
    data = bytes(range(256)) * 24  # six fragments of 1024 bytes
    async with open_guest(max_ranges=max_ranges, max_fragment=1024) as guest:
        # Sent order 0 2 1 4 3 5: two disjoint ranges after "2" and again after "4".
        report = await run(guest, "reorder:at=1", "reorder:at=3", data=data, fragment_size=1024)
        assert content(guest.path("/d/f")) == (OLD if outcome == "refused" else data)
    assert report.outcome == outcome, report
    if outcome == "refused":
        assert report.status("write:1") == INVALIDARG


# -- the SPEC syntax -------------------------------------------------------------------------

CANONICAL = [
    "disconnect:at=write:3", "disconnect:bytes=100", "disconnect:messages=2",
    "cancel:at=start", "stall:at=complete,seconds=1.5", "complete-early:at=write:0",
    "abandon:at=negotiate", "duplicate:at=write:7", "reorder:at=write:0",
    "overlap:at=write:2,bytes=10", "corrupt:at=write:1,field=size,value=max",
    "corrupt:at=negotiate,field=frame-count,value=+3", "garbage:at=start,bytes=10,seed=4",
    "truncate:at=write:2", "truncate:at=complete,keep=3", "noread:at=write:0,seconds=0.0",
    "idle:connections=3,seconds=2.0", "keep-going", "cancel:at=write:2,copy=1",
]


@pytest.mark.parametrize("spec", CANONICAL)
def test_spec_round_trips(spec: str) -> None:
    fault = parse_fault(spec)
    assert fault.spec() == spec
    assert parse_fault(fault.spec()) == fault


def test_spec_shorthands_and_defaults() -> None:
    assert parse_fault("cancel:at=4") == parse_fault("cancel:at=write:4")
    assert parse_fault(" Stall : at = 2 , seconds = 1 ") == Stall(at=Point("write", 2),
                                                                     seconds=1.0)
    assert parse_fault("garbage").spec() == "garbage:at=start,bytes=4096,seed=0"
    assert parse_fault("idle").spec() == "idle:connections=1,seconds=10.0"
    assert parse_fault("corrupt:at=1,field=offset,value=0X10") == Corrupt(
        at=Point("write", 1), field="offset", value="0x10")
    assert parse_fault("disconnect:bytes=0x10") == Disconnect(after_bytes=16)
    assert FaultPlan.parse(["idle", "keep-going"]).faults[0] == Idle()


@pytest.mark.parametrize("spec", [
    "", "explode", "cancel", "cancel:at=middle", "cancel:at=write:x", "cancel:at=start:1",
    "cancel:when=3", "cancel:at", "stall:at=1", "stall:at=1,seconds=-1",
    "stall:at=1,seconds=inf", "disconnect", "disconnect:at=1,bytes=2", "disconnect:bytes=-1",
    "duplicate:at=start", "reorder:at=complete", "overlap:at=1,bytes=0",
    "corrupt:at=1,field=size", "corrupt:at=1,field=colour,value=1",
    "corrupt:at=start,field=size,value=1", "corrupt:at=1,field=size,value=big",
    "garbage:bytes=0", "idle:connections=x",
])
def test_bad_specs_are_refused(spec: str) -> None:
    with pytest.raises(FaultSpecError):
        parse_fault(spec)


def test_every_field_names_real_offsets() -> None:
    """The corruptible fields sit where PROTOCOL.md section 3 puts them."""
    offsets = {name: (f.offset, f.width) for name, f in FIELDS.items()}
    assert offsets["msgsize"] == (4, 4)
    assert offsets["operation"] == (28, 4)
    assert offsets["offset"] == (68, 8)
    assert offsets["size"] == (76, 4)
    assert offsets["copy-flags"] == (1104, 4)
    assert offsets["file-size"] == (1108, 8)
    assert offsets["frame-count"] == (28, 2) and offsets["msg-count"] == (30, 2)


# -- the CLI ------------------------------------------------------------------------------


async def _host_sim(*args: str) -> trio.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process([sys.executable, "-m", "host_sim.cli", "copy", *args],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def test_cli_fault_option(guest: Guest, tmp_path: Path) -> None:
    source = tmp_path / "a.bin"
    source.write_bytes(DATA)
    ok = await _host_sim("--to", guest.url, "--fault", "reorder:at=1", "--fault",
                         "duplicate:at=3", "--window", "3", "--create-full-path",
                         str(source), "/x/")
    assert ok.returncode == 0, ok.stderr
    assert b"committed (committed: yes)" in ok.stdout
    assert b"applied: reorder:at=write:1 duplicate:at=write:3" in ok.stdout
    assert content(guest.path("/x/a.bin")) == DATA

    failed = await _host_sim("--to", guest.url, "--force", "--fault",
                             "complete-early:at=2,copy=1", str(source), str(source), "/x/")
    assert failed.returncode == 1
    lines = failed.stdout.decode().splitlines()
    assert "committed (committed: yes)" in lines[0]
    assert "refused (committed: no)" in lines[1] and "complete 0x80004005" in lines[1]
    assert "0x80004005: unspecified failure" in failed.stdout.decode()

    bad = await _host_sim("--to", guest.url, "--fault", "stall:at=1", str(source), "/x/")
    assert bad.returncode == 2
    assert b"--fault" in bad.stderr and b"seconds" in bad.stderr
    await sessions_gone(guest)
    assert temp_files(guest.root) == []


def _file_that_reads_short() -> Path:
    """A sysfs attribute: ``stat`` says 4096 bytes, a read gives a few (a source that
    shrinks between START and its WRITEs, without a race)."""
    for name in ("/sys/kernel/mm/transparent_hugepage/enabled", "/sys/power/state",
                 "/sys/kernel/uevent_seqnum", "/sys/kernel/profiling"):
        path = Path(name)
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_size > len(path.read_bytes()):
                return path
    pytest.skip("no sysfs file that reads shorter than its size here")


@pytest.mark.parametrize("fault", [[], ["--fault", "duplicate:at=0"]], ids=["clean", "fault"])
async def test_a_source_that_reads_short_fails_cleanly(guest: Guest, fault: list[str]) -> None:
    """The fault host reads the source as the clean copy does: a short read is an error
    (no short WRITE sent), said in one line, and the guest drops the copy."""
    source = _file_that_reads_short()
    done = await _host_sim("--to", guest.url, "--no-progress", *fault, str(source), "/")
    assert done.returncode == 1, done.stderr
    assert b"host-sim: " in done.stderr and b"the source shrank while it was read" in done.stderr
    assert b"Traceback" not in done.stderr
    await sessions_gone(guest)
    assert temp_files(guest.root) == []
    assert not guest.path(f"/{source.name}").exists()
    assert guest.stats.committed == 0
