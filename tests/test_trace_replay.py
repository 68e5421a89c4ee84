"""Every checked-in trace (tests/traces/*.trace) replayed against a fresh receiver, and the
replay itself: pacing, differences, --status-only, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from e2e_helpers import REPO, _child_env, short_tempdir
from traces.make_traces import CASES, SETUP_SUFFIX, apply_setup, record

from gsi.server import config_options
from gsi.testing import open_guest
from gsi.trace import Direction, Trace, TraceRecord, read_trace
from host_sim.replayer import plan_replay, replay
from host_sim.trace_decode import frame_direction

TRACES = Path(__file__).parent / "traces"
TRACE_FILES = sorted(TRACES.glob("*.trace"))


def _setup(trace_file: Path) -> dict[str, object]:
    sidecar = trace_file.with_name(trace_file.name.removesuffix(".trace") + SETUP_SUFFIX)
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


async def _replay_fresh(trace_file: Path, root: Path, **kwargs: object):  # type: ignore[no-untyped-def]
    trace = read_trace(trace_file)
    apply_setup(root, _setup(trace_file))
    options = config_options(trace.metadata.get("options", {}))
    with trio.fail_after(30):
        async with open_guest(root, **options) as guest:
            return await replay(trace, guest.url, **kwargs)  # type: ignore[arg-type]


def test_every_scenario_is_checked_in() -> None:
    assert {f.name.removesuffix(".trace") for f in TRACE_FILES} >= set(CASES)


@pytest.mark.parametrize("trace_file", TRACE_FILES, ids=[f.stem for f in TRACE_FILES])
async def test_checked_in_trace_replays_without_difference(trace_file: Path,
                                                            tmp_path: Path) -> None:
    report = await _replay_fresh(trace_file, tmp_path)
    assert report.differences == [], "\n".join(map(str, report.differences))
    assert report.problem == ""
    plan = plan_replay(read_trace(trace_file))
    assert report.sent == len(plan.messages) and len(report.answers) == len(plan.answers)


def test_recording_is_deterministic(tmp_path: Path) -> None:
    """Recorded again now, the messages both ways are the checked-in ones byte for byte:
    nothing in the receiver's answers depends on time (or on the run)."""
    for name in ("complete_copy", "pipelined_copy", "start_while_copy_open",
                 "symlink_on_the_way"):
        again, checked_in = read_trace(record(name, tmp_path)), read_trace(TRACES / f"{name}.trace")
        for direction in Direction:
            new = [m.payload for m in frame_direction(again, direction).messages]
            old = [m.payload for m in frame_direction(checked_in, direction).messages]
            assert new == old, (name, direction)


def test_replay_paces_as_recorded() -> None:
    """Stop-and-wait traces wait for every answer; the pipelined one sends 8 at once."""
    serial = plan_replay(read_trace(TRACES / "complete_copy.trace"))
    assert serial.wait_for == list(range(len(serial.messages)))
    piped = plan_replay(read_trace(TRACES / "pipelined_copy.trace"))
    # NEGOTIATE, START, then 8 WRITEs sent after 2 answers, the last 1 after 10.
    assert piped.wait_for[2:10] == [2] * 8
    assert piped.wait_for[10] == 10


async def test_differences_are_reported(tmp_path: Path) -> None:
    """The same trace into a root where the file already exists: START answers 0x80070050,
    every later request fails; each difference names the answer, field, both values."""
    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "report.bin").write_bytes(b"already here")
    report = await _replay_fresh(TRACES / "complete_copy.trace", tmp_path)
    first = report.differences[0]
    assert (first.index, first.request, first.field) == (1, "START_FILE_COPY",
                                                          "icmsg_hdr.status")
    assert first.recorded.startswith("0x00000000") and first.got.startswith("0x80070050")
    assert {d.index for d in report.differences} == set(range(1, len(report.answers)))
    assert (tmp_path / "incoming" / "report.bin").read_bytes() == b"already here"


async def test_status_only_ignores_echo_differences(tmp_path: Path) -> None:
    """A trimmed-echo recording against a full-echo receiver: the bytes differ, the
    statuses do not."""
    trace = read_trace(TRACES / "trimmed_echo.trace")
    async with open_guest(tmp_path / "a") as guest:
        strict = await replay(trace, guest.url)
    assert any(d.field == "vmbuspipe_hdr.msgsize" for d in strict.differences)
    async with open_guest(tmp_path / "b") as guest:
        loose = await replay(trace, guest.url, status_only=True)
    assert loose.differences == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_sim.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=_child_env(), timeout=60, check=False)


async def test_replay_cli_exit_status(tmp_path: Path) -> None:
    with short_tempdir() as tmp:
        async with open_guest(tmp / "root") as guest:
            ok = await trio.to_thread.run_sync(_cli, "replay", str(TRACES / "overwrite.trace"),
                                               "--to", guest.url)
            again = await trio.to_thread.run_sync(
                _cli, "replay", str(TRACES / "overwrite.trace"), "--to", guest.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "0 differences" in ok.stdout
    assert again.returncode == 1
    with short_tempdir() as tmp:
        async with open_guest(tmp / "root") as guest:
            loose = await trio.to_thread.run_sync(
                _cli, "replay", str(TRACES / "trimmed_echo.trace"), "--to", guest.url,
                "--status-only")
    assert loose.returncode == 0, loose.stdout + loose.stderr
    assert "recorded with receiver options trim_write_echo=True" in loose.stdout
    assert "answer #1 (to START_FILE_COPY): icmsg_hdr.status: recorded 0x00000000" in again.stdout


def test_replay_cli_bad_trace(tmp_path: Path) -> None:
    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"not a trace at all")
    result = _cli("replay", str(bad), "--to", "unix:///nonexistent")
    assert result.returncode == 2
    assert "no GSITRACE magic" in result.stderr


async def test_replay_of_unanswered_request_times_out(autojump_clock: trio.abc.Clock,
                                                      tmp_path: Path) -> None:
    """A recorded answer that never comes: the replay gives up after its timeout and
    reports the missing answer (virtual clock: no real waiting)."""
    trace = read_trace(TRACES / "complete_copy.trace")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, silent, listeners)
        report = await replay(trace, f"tcp://127.0.0.1:{port}", timeout=5)
        nursery.cancel_scope.cancel()
    assert "no answer within 5" in report.problem
    assert report.sent == 1
    assert report.differences[0].got == "no answer"
    assert len(report.differences) == len(plan_replay(trace).answers)


def test_unframed_tail_is_replayed() -> None:
    """A framing-error trace: the bad bytes are the tail, sent after the last answer."""
    plan = plan_replay(read_trace(TRACES / "framing_error.trace"))
    assert plan.tail.startswith(b"\x02\x00\x00\x00")
    assert plan.tail_wait == 1


def test_partial_records_frame_into_messages() -> None:
    """Messages split across records and several messages in one record frame alike."""
    trace = read_trace(TRACES / "complete_copy.trace")
    data = trace.stream(Direction.HOST_TO_GUEST)
    pieces = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    split = Trace(1, {}, [TraceRecord(Direction.HOST_TO_GUEST, i, p)
                          for i, p in enumerate(pieces)])
    a = [m.payload for m in frame_direction(split, Direction.HOST_TO_GUEST).messages]
    b = [m.payload for m in frame_direction(trace, Direction.HOST_TO_GUEST).messages]
    assert a == b and len(a) == 7
