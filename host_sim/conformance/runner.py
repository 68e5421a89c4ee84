"""Runs scenarios against a receiver: one fresh connection per scenario, under a timeout.

Each scenario gets its own guest directory ``/gsi-check-RANDOM/SCENARIO-ID/`` so runs never
collide; with a guest root the run's directory is removed at the end. A receiver that
stops answering fails the scenario when ``timeout`` passes; it cannot hang the run.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from gsi.constants import DATA_FRAGMENT, ICMSG_HDR_END, WRITE_HEADER_SIZE
from gsi.errors import GsiError
from gsi.transports import TransportError, connect

from ..client import RECEIVE_SIZE, HostClient, open_host
from ..protocol import Answer
from .catalogue import CATALOGUE, select
from .model import (
    DROPPED,
    PROFILES,
    Context,
    Expected,
    FsExpect,
    Outcome,
    Result,
    Scenario,
    Step,
    describe,
    expected_for,
    matches,
    show_expected,
    show_status,
)
from .steps import trimmed_write_echo

DEFAULT_TIMEOUT = 5.0
FS_SETTLE = 2.0
"""Seconds a filesystem expectation may take to hold after the connection closed (the
receiver removes an aborted copy's temp file once it sees the close)."""


class ScenarioFailed(Exception):
    """A step did not get what it expected; the message says what happened."""


@dataclass(slots=True)
class _Run:
    url: str
    profile: str
    guest_root: Path | None
    run_name: str
    max_fragment: int
    timeout: float
    outside: Path | None

    @property
    def escape(self) -> str:
        """The name a '..' scenario aims at beside the guest root."""
        return f"{self.run_name}-escape"


async def _next(host: HostClient) -> Answer | None:
    """The next answer, or None once the receiver closed (or reset) the connection.

    Raises:
        CopyFailed: the receiver broke the protocol (an answer out of order, no RESPONSE).
    """
    while (answer := host.poll_answer()) is None:
        if host.conn.closed:
            return None
        try:
            data = await host.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return None
        host.conn.receive_data(data)
    return answer


def _check_answer(step: Step, request: bytes, expected: Expected, answer: Answer) -> None:
    if expected == DROPPED:
        raise ScenarioFailed(f"{step.label}: answered {show_status(answer.status)} instead "
                             "of closing the connection")
    assert not isinstance(expected, str)
    if not matches(expected, answer.status):
        raise ScenarioFailed(f"{step.label}: expected {show_expected(expected)}, got "
                             f"{describe(answer.status)}")
    if step.echo is None:
        return
    want = step.echo(request, answer.status)
    got = answer.payload
    if got == want:
        return
    if (len(want) > ICMSG_HDR_END + WRITE_HEADER_SIZE and got == trimmed_write_echo(want)):
        return
    first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                 min(len(got), len(want)))
    raise ScenarioFailed(f"{step.label}: the answer is not the request echoed "
                         f"({len(got)} bytes, expected {len(want)}; first difference at "
                         f"payload offset {first})")


async def _read_answers(host: HostClient, pending: list[tuple[Step, bytes, Expected]],
                        observed: list[str]) -> None:
    for step, request, expected in pending:
        answer = await _next(host)
        if answer is None:
            observed.append("close")
            raise ScenarioFailed(f"{step.label}: the receiver closed the connection "
                                 f"instead of answering {show_expected(expected)}")
        observed.append(show_status(answer.status))
        _check_answer(step, request, expected, answer)
    pending.clear()


async def _expect_close(host: HostClient, step: Step, observed: list[str]) -> None:
    answer = await _next(host)
    if answer is not None:
        observed.append(show_status(answer.status))
        raise ScenarioFailed(f"{step.label}: answered {show_status(answer.status)} instead "
                             "of closing the connection")
    observed.append("close")


async def _run_steps(sc: Scenario, ctx: Context, profile: str, observed: list[str]) -> None:
    host = ctx.host
    pending: list[tuple[Step, bytes, Expected]] = []
    for step in sc.steps:
        expected = expected_for(step.expect, profile)
        for request in step.build(ctx):
            size = step.chunk or max(1, len(request))
            for at in range(0, len(request), size):
                await host.send(request[at:at + size])
            if step.action == "close":
                await host.aclose()
                observed.append("(closed by the checker)")
                return
            if step.action == "eof":
                if not isinstance(host.stream, trio.abc.HalfCloseableStream):
                    raise ScenarioFailed("this transport cannot end the stream alone")
                await host.stream.send_eof()
            if expected == DROPPED or step.action == "eof":
                await _read_answers(host, pending, observed)
                await _expect_close(host, step, observed)
                return
            pending.append((step, request, expected))
            if step.wait:
                await _read_answers(host, pending, observed)
    await _read_answers(host, pending, observed)


def _entries(top: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        rel = Path(dirpath).relative_to(top)
        for name in dirnames:
            found.add(f"{(rel / name).as_posix()}/")
        found.update((rel / name).as_posix() for name in filenames)
    return found


def _fs_problem(expect: FsExpect, where: Path) -> str | None:
    """What differs from the expectation (None: it holds)."""
    for name, content in expect.files.items():
        path = where / name
        if path.is_symlink() or not path.is_file():
            return f"{name} was not committed"
        got = path.read_bytes()
        if got != content:
            return f"{name} holds {len(got)} bytes, not the {len(content)} sent"
    for name in expect.dirs:
        if not (where / name).is_dir():
            return f"directory {name}/ does not exist"
    if expect.exact:
        wanted: set[str] = {f"{d}/" for d in expect.dirs}
        for name in [*expect.files, *expect.dirs]:
            wanted.update(f"{p.as_posix()}/" for p in Path(name).parents if str(p) != ".")
        wanted.update(expect.files)
        extra = sorted(_entries(where) - wanted) if where.is_dir() else []
        if extra:
            return "left behind: " + ", ".join(extra[:4])
    return None


def _snapshot(top: Path | None) -> dict[str, bytes | str]:
    """Every entry under ``top``: file content, link target or 'dir'."""
    out: dict[str, bytes | str] = {}
    if top is None:
        return out
    for name in sorted(_entries(top)):
        path = top / name
        if path.is_symlink():
            out[name] = os.readlink(path)
        elif path.is_dir():
            out[name] = "dir"
        else:
            out[name] = path.read_bytes()
    return out


def _outside_problem(run: _Run, ctx: Context, before: dict[str, bytes | str]) -> str | None:
    assert run.guest_root is not None
    escaped = run.guest_root.resolve().parent / ctx.escape
    if os.path.lexists(escaped):
        shutil.rmtree(escaped, ignore_errors=True)
        return f"wrote outside the root: {escaped}"
    if _snapshot(run.outside) != before:
        return f"changed a directory outside the root ({run.outside})"
    return None


async def _check_fs(sc: Scenario, run: _Run, ctx: Context,
                    before: dict[str, bytes | str]) -> str:
    """'' when the filesystem is as expected; raises ScenarioFailed otherwise."""
    expect = sc.fs.get(run.profile)
    if run.guest_root is None:
        return "; fs not checked (no --guest-root)" if expect is not None else ""
    where = run.guest_root / run.run_name / sc.id
    deadline = trio.current_time() + min(FS_SETTLE, run.timeout)
    while True:
        problem = await trio.to_thread.run_sync(_outside_problem, run, ctx, before)
        if problem is None and expect is not None:
            problem = await trio.to_thread.run_sync(_fs_problem, expect, where)
        if problem is None:
            return f"; {expect.describe()}" if expect is not None else ""
        if trio.current_time() >= deadline:
            raise ScenarioFailed(problem)
        await trio.sleep(0.02)


def _skip_reason(sc: Scenario, run: _Run) -> str | None:
    if run.profile in sc.na:
        return f"N/A in profile {run.profile}: {sc.na[run.profile]}"
    if sc.setup is not None and run.guest_root is None:
        return "needs --guest-root (it prepares the guest filesystem)"
    return None


async def _prepare(sc: Scenario, run: _Run) -> dict[str, bytes | str]:
    """Run the scenario's filesystem setup; a snapshot of the directory outside the root."""
    if sc.setup is not None and run.guest_root is not None and run.outside is not None:
        where = run.guest_root / run.run_name / sc.id
        await trio.to_thread.run_sync(functools.partial(where.mkdir, parents=True,
                                                        exist_ok=True))
        await trio.to_thread.run_sync(sc.setup, where, run.outside)
    if run.outside is None:
        return {}
    return await trio.to_thread.run_sync(_snapshot, run.outside)


async def run_scenario(sc: Scenario, run: _Run) -> Result:
    def result(outcome: Outcome, observed: str) -> Result:
        expected = "N/A" if run.profile in sc.na else sc.expected(run.profile)
        return Result(id=sc.id, title=sc.title, sent=sc.sent(), expected=expected,
                      observed=observed, outcome=outcome,
                      seconds=time.perf_counter() - started)

    started = time.perf_counter()
    reason = _skip_reason(sc, run)
    if reason is not None:
        return result("SKIP", reason)
    observed: list[str] = []
    try:
        before = await _prepare(sc, run)
        with trio.move_on_after(run.timeout) as scope:
            async with open_host(run.url, fragment_size=run.max_fragment) as host:
                ctx = Context(host=host, dir=f"/{run.run_name}/{sc.id}/",
                              max_fragment=run.max_fragment, escape=run.escape)
                await _run_steps(sc, ctx, run.profile, observed)
        if scope.cancelled_caught:
            raise ScenarioFailed(f"no answer within {run.timeout:g} s")
        fs = await _check_fs(sc, run, ctx, before)
    except (ScenarioFailed, GsiError, OSError) as exc:
        shown = " ".join(observed)
        return result("FAIL", f"{shown + ': ' if shown else ''}{exc}")
    return result("PASS", " ".join(observed) + fs)


async def check(url: str, *, profile: str = "gsi", guest_root: str | os.PathLike[str] | None = None,
                only: Sequence[str] = (), timeout: float = DEFAULT_TIMEOUT,
                max_fragment: int = DATA_FRAGMENT,
                scenarios: Iterable[Scenario] | None = None) -> list[Result]:
    """Run the catalogue (or ``scenarios``) against the receiver at ``url``.

    Raises:
        ValueError: an unknown profile.
        gsi.transports.TransportError: nobody answers at ``url`` (within ``timeout``).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    chosen = select(list(CATALOGUE if scenarios is None else scenarios), only)
    with trio.move_on_after(timeout) as probing:
        probe = await connect(url)
    if probing.cancelled_caught:
        raise TransportError(f"cannot connect to {url}: no answer within {timeout:g} s")
    await trio.aclose_forcefully(probe)
    root = Path(guest_root) if guest_root is not None else None
    outside = Path(tempfile.mkdtemp(prefix="gsi-check-outside-")) if root is not None else None
    run = _Run(url=url, profile=profile, guest_root=root,
               run_name=f"gsi-check-{secrets.token_hex(4)}", max_fragment=max_fragment,
               timeout=timeout, outside=outside)
    try:
        return [await run_scenario(sc, run) for sc in chosen]
    finally:
        if root is not None:
            await trio.to_thread.run_sync(_cleanup, root, run, outside)


def _cleanup(root: Path, run: _Run, outside: Path | None) -> None:
    shutil.rmtree(root / run.run_name, ignore_errors=True)
    shutil.rmtree(root.resolve().parent / run.escape, ignore_errors=True)
    if outside is not None:
        shutil.rmtree(outside, ignore_errors=True)


def run_checks(url: str, *, profile: str = "gsi",
               guest_root: str | os.PathLike[str] | None = None, only: Sequence[str] = (),
               timeout: float = DEFAULT_TIMEOUT,
               max_fragment: int = DATA_FRAGMENT) -> list[Result]:
    """:func:`check` from synchronous code (runs its own ``trio.run``)."""
    return trio.run(functools.partial(check, url, profile=profile, guest_root=guest_root,
                                      only=only, timeout=timeout, max_fragment=max_fragment))
