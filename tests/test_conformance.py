"""``host-sim check``: the catalogue against the real receiver (both profiles, in process and
as subprocesses), against receivers that break one rule each, and its command line."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trio
from broken_receiver import VIOLATIONS, broken_guest, outside_entries
from e2e_helpers import REPO, _child_env, running_receiver, short_tempdir

from gsi import codec
from gsi.constants import CopyFlags, IcMsgType, Status
from gsi.events import Negotiate, Rejected, StartCopy
from gsi.names import encode_name
from gsi.protocol import GuestConnection
from gsi.testing import open_guest
from gsi.transports import listener_url, open_listeners
from host_sim import Result, run_checks
from host_sim.cli import main as host_sim_main
from host_sim.conformance import CATALOGUE, check, junit_xml

ALL_IDS = {sc.id for sc in CATALOGUE}
LINUX_NA = {sc.id for sc in CATALOGUE if "linux" in sc.na}
ECHO_CHECKED = {sc.id for sc in CATALOGUE if any(step.echo for step in sc.steps)}


def outcomes(results: list[Result], outcome: str) -> set[str]:
    return {r.id for r in results if r.outcome == outcome}


def assert_all_pass(results: list[Result], *,
                    skipped: set[str] | frozenset[str] = frozenset()) -> None:
    bad = [f"{r.id}: {r.observed}" for r in results if r.outcome == "FAIL"]
    assert not bad, "\n".join(bad)
    assert outcomes(results, "SKIP") == skipped
    assert {r.id for r in results} == ALL_IDS


# -- the real receiver ---------------------------------------------------------------------

async def test_gsi_receiver_passes_every_scenario_in_profile_gsi() -> None:
    async with open_guest() as guest:
        results = await check(guest.url, guest_root=guest.root)
        assert_all_pass(results)
        # what the scenarios committed is cleaned up: the root is as it was
        assert list(guest.root.iterdir()) == []


async def test_linux_mode_passes_profile_linux() -> None:
    async with open_guest(linux_status_codes=True, linux_create_path=True) as guest:
        results = await check(guest.url, profile="linux", guest_root=guest.root)
    assert_all_pass(results, skipped=LINUX_NA)
    assert all(r.observed.startswith("N/A in profile linux: ") for r in results
               if r.outcome == "SKIP")


async def test_without_guest_root_only_wire_checks_run() -> None:
    async with open_guest() as guest:
        results = await check(guest.url)
    needs_root = {sc.id for sc in CATALOGUE if sc.setup is not None}
    assert_all_pass(results, skipped=needs_root)
    basic = next(r for r in results if r.id == "copy.basic")
    assert "fs not checked (no --guest-root)" in basic.observed
    assert all("needs --guest-root" in r.observed for r in results if r.outcome == "SKIP")


async def test_gsi_profile_tells_the_linux_create_path_apart() -> None:
    """Linux CREATE_PATH semantics in the gsi profile: exactly the nested case fails."""
    async with open_guest(linux_create_path=True) as guest:
        results = await check(guest.url, guest_root=guest.root)
    assert outcomes(results, "FAIL") == {"create-path.nested"}


def test_cli_against_receiver_subprocess_profile_gsi(tmp_path: Path) -> None:
    with short_tempdir() as tmp:
        root = tmp / "root"
        root.mkdir()
        with running_receiver(root, [f"unix://{tmp / 'g.sock'}"], ["--no-fsync"]) as rx:
            done = _run_cli("--to", rx.url, "--guest-root", root, "--junit",
                            tmp_path / "junit.xml")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == f"{len(CATALOGUE)} passed, 0 failed, 0 skipped"
    assert [line.split()[:2] for line in lines[:-1]] == [["PASS", sc.id] for sc in CATALOGUE]
    suite = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (
        str(len(CATALOGUE)), "0", "0")
    assert {case.get("name") for case in suite.iter("testcase")} == ALL_IDS


def test_cli_against_receiver_subprocess_profile_linux() -> None:
    with short_tempdir() as tmp:
        root = tmp / "root"
        root.mkdir()
        with running_receiver(root, [f"unix://{tmp / 'g.sock'}"],
                              ["--no-fsync", "--linux-status-codes", "--linux-create-path"],
                              ) as rx:
            done = _run_cli("--to", rx.url, "--guest-root", root, "--profile", "linux")
    assert done.returncode == 0, done.stdout + done.stderr
    passed = len(CATALOGUE) - len(LINUX_NA)
    assert done.stdout.splitlines()[-1] == (
        f"{passed} passed, 0 failed, {len(LINUX_NA)} skipped")


def _run_cli(*args: object, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_sim.cli", "check", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, env=_child_env(),
                          timeout=timeout, check=False)


# -- receivers that break one rule each ---------------------------------------------------

EXPECTED_FAILURES = {
    "unknown-type-fails": {"msgtype.unknown", "msgtype.heartbeat"},
    "response-flag-only": ECHO_CHECKED,
    "cancel-fails": {"copy.cancel", "copy.cancel-no-copy", "overwrite.force-cancelled"},
    "no-coverage-check": {"copy.complete-with-hole"},
    "overwrites-without-flag": {"overwrite.exists", "overwrite.directory",
                                "symlink.target", "overwrite.fifo"},
    "follows-dotdot": {"names.dotdot-escape", "names.dotdot-inside"},
}


def test_every_violation_has_its_expectation() -> None:
    assert set(EXPECTED_FAILURES) == set(VIOLATIONS)
    assert {"negotiate.ok", "echo.copy", "msgtype.unknown"} <= ECHO_CHECKED < ALL_IDS


@pytest.mark.parametrize("violation", VIOLATIONS)
async def test_a_broken_receiver_fails_exactly_the_matching_scenarios(violation: str) -> None:
    async with broken_guest(violation) as (url, root):
        results = await check(url, guest_root=root)
        assert outcomes(results, "FAIL") == EXPECTED_FAILURES[violation], "\n".join(
            f"{r.id}: {r.observed}" for r in results if r.outcome == "FAIL")
        assert outcomes(results, "PASS") == ALL_IDS - EXPECTED_FAILURES[violation]
        assert outside_entries(root) == []  # an escape was removed at the end of the run


async def test_a_receiver_writing_outside_the_root_is_reported() -> None:
    async with broken_guest("follows-dotdot") as (url, root):
        results = await check(url, guest_root=root, only=["names.dotdot-escape"])
    (result,) = results
    assert result.outcome == "FAIL"
    assert "expected 0x80070005, got 0x00000000" in result.observed


async def test_cancel_answered_as_the_uio_daemon_does_passes_profile_linux() -> None:
    async with broken_guest("cancel-fails", linux_status_codes=True,
                            linux_create_path=True) as (url, root):
        results = await check(url, profile="linux", guest_root=root)
    assert_all_pass(results, skipped=LINUX_NA)


async def test_a_receiver_that_never_answers_fails_by_timeout(autojump_clock: object) -> None:
    with short_tempdir() as tmp:
        listeners = await open_listeners(f"unix://{tmp / 'mute.sock'}")

        async def swallow(stream: trio.abc.Stream) -> None:
            async with stream:
                while await stream.receive_some(65536):
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, swallow, listeners)
            with trio.fail_after(60):
                results = await check(listener_url(listeners[0]),
                                      only=["negotiate.ok", "copy.basic"])
            nursery.cancel_scope.cancel()
    assert [(r.id, r.outcome) for r in results] == [("negotiate.ok", "FAIL"),
                                                    ("copy.basic", "FAIL")]
    assert all("no answer within 5 s" in r.observed for r in results)


async def test_a_receiver_that_closes_every_connection_fails_every_scenario() -> None:
    with short_tempdir() as tmp:
        listeners = await open_listeners(f"unix://{tmp / 'rude.sock'}")

        async def hang_up(stream: trio.abc.Stream) -> None:
            await stream.aclose()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, hang_up, listeners)
            with trio.fail_after(30):
                results = await check(listener_url(listeners[0]), timeout=2)
            nursery.cancel_scope.cancel()
    assert outcomes(results, "FAIL") == ALL_IDS - {
        sc.id for sc in CATALOGUE if sc.setup is not None}
    assert all("closed the connection" in r.observed or "connection lost" in r.observed
               for r in results if r.outcome == "FAIL"), [r.observed for r in results]


# -- selection, report, command line ------------------------------------------------------

async def test_only_selects_by_topic_id_and_pattern() -> None:
    async with open_guest() as guest:
        results = await check(guest.url, only=["negotiate", "copy.basic", "names.dot*"])
    assert [r.id for r in results] == [
        sc.id for sc in CATALOGUE if sc.topic == "negotiate"
        or sc.id in ("copy.basic", "names.dotdot-escape", "names.dotdot-inside",
                     "names.dotdot-file-name", "names.dot-components")]
    assert all(r.outcome == "PASS" for r in results)


def test_run_checks_is_usable_from_sync_code() -> None:
    async def serve_and_check() -> list[Result]:
        async with open_guest() as guest:
            return await trio.to_thread.run_sync(
                lambda: run_checks(guest.url, only=["negotiate.ok"], guest_root=guest.root))
    (result,) = trio.run(serve_and_check)
    assert (result.id, result.outcome) == ("negotiate.ok", "PASS")


def test_junit_reports_failures_and_skips() -> None:
    results = [
        Result(id="a.pass", title="t", sent="s", expected="0", observed="0", outcome="PASS"),
        Result(id="a.fail", title="t", sent="s", expected="0", observed="0x80004005",
               outcome="FAIL"),
        Result(id="b.skip", title="t", sent="s", expected="N/A", observed="N/A in profile "
               "linux: why", outcome="SKIP"),
    ]
    root = ET.fromstring(ET.tostring(junit_xml(results, profile="linux", url="u").getroot()))
    suite = root.find("testsuite")
    assert suite is not None and suite.get("failures") == "1" and suite.get("skipped") == "1"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    fail, skip = cases["a.fail"].find("failure"), cases["b.skip"].find("skipped")
    assert fail is not None and fail.get("message") == "0x80004005"
    assert skip is not None and skip.get("message") == "N/A in profile linux: why"
    assert cases["a.pass"].find("failure") is None
    assert cases["a.fail"].get("classname") == "conformance.linux.a"


def test_docs_give_the_catalogue_size() -> None:
    counted = f"{len(CATALOGUE)} scenarios"
    assert counted in (REPO / "README.md").read_text(encoding="utf-8")
    assert counted in (REPO / "docs" / "conformance.md").read_text(encoding="utf-8")


def test_list_prints_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert host_sim_main(["check", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [sc.id for sc in CATALOGUE]
    assert any("(N/A linux)" in line for line in lines)


def test_list_with_only(capsys: pytest.CaptureFixture[str]) -> None:
    assert host_sim_main(["check", "--list", "--only", "framing.*"]) == 0
    ids = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert ids and all(i.startswith("framing.") for i in ids)


@pytest.mark.parametrize(("argv", "message"), [
    (["check"], "--to URL is required"),
    (["check", "--to", "ftp://x"], "host-sim check: "),
    (["check", "--to", "unix:///nonexistent/gsi.sock"], "cannot connect to"),
    (["check", "--list", "--only", "no-such-thing"], "no scenario matches no-such-thing"),
    (["check", "--to", "unix:///x.sock", "--max-fragment", "0"], "--max-fragment must be"),
    (["check", "--to", "unix:///x.sock", "--guest-root", "/nonexistent"], "not a directory"),
])
def test_usage_errors_exit_2(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert host_sim_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["check", "--to", "unix:///x", "--profile", "windows"],
                                  ["check", "--to", "unix:///x", "--timeout", "0"]])
def test_bad_option_values_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        host_sim_main(argv)
    assert exc.value.code == 2


def test_cli_exits_1_on_a_failure_and_prints_it() -> None:
    async def serve_and_run() -> tuple[int, str]:
        async with broken_guest("unknown-type-fails") as (url, _root):
            done = await trio.to_thread.run_sync(
                lambda: _run_cli("--to", url, "--only", "msgtype"))
        return done.returncode, done.stdout
    rc, out = trio.run(serve_and_run)
    assert rc == 1
    assert out.splitlines()[-1] == "0 passed, 2 failed, 0 skipped"
    assert out.startswith("FAIL  msgtype.unknown  sent: NEGOTIATE")
    assert "expected 0x80070032, got 0x80004005" in out


# -- the receiver rule the checker found broken ---------------------------------------------

def test_file_size_above_the_largest_offset_is_an_invalid_argument() -> None:
    guest = GuestConnection()
    body = codec.build_negotiate_body(((3, 0),), ((1, 1),))
    guest.receive_data(codec.build_message(icmsgtype=IcMsgType.NEGOTIATE, body=body,
                                           transaction_id=0))
    negotiated = guest.next_event()
    assert isinstance(negotiated, Negotiate) and negotiated.status == Status.S_OK
    guest.answer(negotiated)
    for size, refused in (((1 << 63) - 1, False), (1 << 63, True), ((1 << 64) - 1, True)):
        start = codec.build_start_body(file_name_field=encode_name("f"),
                                       path_name_field=encode_name("/"),
                                       copy_flags=CopyFlags.NONE, file_size=size)
        guest.receive_data(codec.build_message(icmsgtype=IcMsgType.FCOPY, body=start,
                                               transaction_id=1))
        event = guest.next_event()
        if refused:
            assert isinstance(event, Rejected) and event.status == Status.INVALIDARG
            guest.answer(event)
        else:
            assert isinstance(event, StartCopy) and event.file_size == size
            guest.answer(event, Status.E_FAIL)
