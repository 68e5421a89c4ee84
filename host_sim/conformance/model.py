"""The scenario model of the conformance checker.

A :class:`Scenario` is a list of :class:`Step`\\ s sent over one fresh connection, each
with the answer it expects, plus the filesystem state expected afterwards. Expectations
are per profile: ``gsi`` (PROTOCOL.md section 8) and ``linux`` (what
``hv_fcopy_uio_daemon`` answers, section 5). A step's status is written once for the
``gsi`` profile; the ``linux`` expectation is the same status folded into the four codes
the Linux daemons use, unless the step gives a mapping per profile. A scenario names the
profiles it does not apply to (``na``), with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from gsi.constants import LINUX_STATUSES, Status, describe_status

from ..client import HostClient

PROFILES: Final = ("gsi", "linux")
Profile = Literal["gsi", "linux"]

DROPPED: Final = "dropped"
"""A step's expectation: the receiver closes the connection without answering it."""

StatusSpec = int | frozenset[int]
Expected = StatusSpec | Literal["dropped"]
PerProfile = Expected | Mapping[str, Expected]


def fold_linux(status: int) -> int:
    """A status as the Linux daemons would answer it (their four codes)."""
    return status if status in LINUX_STATUSES else int(Status.E_FAIL)


def _fold(expected: Expected) -> Expected:
    if isinstance(expected, str):
        return expected
    if isinstance(expected, frozenset):
        return frozenset(fold_linux(s) for s in expected)
    return fold_linux(expected)


def expected_for(spec: PerProfile, profile: str) -> Expected:
    """The expectation of one step in ``profile``."""
    if isinstance(spec, Mapping):
        return spec[profile]
    return _fold(spec) if profile == "linux" else spec


def matches(expected: StatusSpec, status: int) -> bool:
    return status in expected if isinstance(expected, frozenset) else status == expected


def show_status(status: int) -> str:
    return "0" if status == 0 else f"0x{status:08X}"


def show_expected(expected: Expected) -> str:
    if isinstance(expected, str):
        return "close"
    if isinstance(expected, frozenset):
        return "|".join(show_status(s) for s in sorted(expected))
    return show_status(expected)


def describe(status: int) -> str:
    return describe_status(status)


@dataclass(slots=True)
class Context:
    """What a step builder sees while its scenario runs.

    Attributes:
        host: the scenario's connection (``host.conn`` builds the requests).
        dir: the scenario's own guest directory, ``/RUN/SCENARIO-ID/``.
        max_fragment: the receiver's maximum fragment (``--max-fragment``).
        escape: a name that must never appear beside the guest root (``..`` checks).
    """

    host: HostClient
    dir: str
    max_fragment: int
    escape: str

    @property
    def fragment(self) -> int:
        """Data bytes per ordinary WRITE: the stock 6144, or less if the receiver takes less."""
        return min(self.max_fragment, 6144)


Build = Callable[[Context], list[bytes]]
"""Builds the requests of one step (usually one) when the step runs."""

EchoRule = Callable[[bytes, int], bytes]
"""(request, answered status) -> the answer the rule expects byte for byte."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """Some requests sent in order, each expecting the same answer.

    Attributes:
        label: what is sent, for the report.
        build: makes the requests when the step runs.
        expect: status per request (or :data:`DROPPED`), see :func:`expected_for`.
        echo: when set, each answer must equal what this rule builds (a WRITE answer
            may also be the trimmed echo of PROTOCOL.md section 2).
        wait: read the answers before the next step (else they are read with the next
            waiting step's: requests pipelined in one window).
        action: ``send``; ``close`` (close abruptly after sending); ``eof`` (send, then
            end the stream and expect the receiver to close without answering).
        chunk: send each request in pieces of this many bytes (framing checks).
    """

    label: str
    build: Build
    expect: PerProfile = 0
    echo: EchoRule | None = None
    wait: bool = True
    action: Literal["send", "close", "eof"] = "send"
    chunk: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FsExpect:
    """The scenario directory afterwards, relative to it.

    Attributes:
        files: every file that must exist, with its exact content.
        dirs: directories that must exist (parents of ``files`` are implied).
        exact: nothing else may exist there (no temp file, nothing half-written).
    """

    files: Mapping[str, bytes] = field(default_factory=dict)
    dirs: tuple[str, ...] = ()
    exact: bool = True

    def describe(self) -> str:
        if not self.files and not self.dirs:
            return "nothing written" if self.exact else "-"
        names = [f"{name} ({len(data)} B)" for name, data in self.files.items()]
        names += [f"{d}/" for d in self.dirs]
        return ", ".join(names) + (" only" if self.exact else "")


Setup = Callable[[Path, Path], None]
"""Prepares the guest filesystem: (scenario directory, a directory outside the root)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One check.

    Attributes:
        id: ``topic.name``, stable (``--only`` patterns match it).
        title: one line saying what it shows.
        steps: what is sent, in order, over one connection.
        fs: filesystem expectation per profile (None: not checked in that profile).
        na: profiles the scenario does not apply to, with the reason (SKIP there).
        setup: filesystem preparation; the scenario needs ``--guest-root``.
        rule: where the expectation comes from (PROTOCOL.md section, docs/faults.md).
    """

    id: str
    title: str
    steps: tuple[Step, ...]
    fs: Mapping[str, FsExpect | None] = field(default_factory=dict)
    na: Mapping[str, str] = field(default_factory=dict)
    setup: Setup | None = None
    rule: str = ""

    @property
    def topic(self) -> str:
        return self.id.partition(".")[0]

    def sent(self) -> str:
        return ", ".join(step.label for step in self.steps)

    def expected(self, profile: str) -> str:
        statuses = " ".join(show_expected(expected_for(s.expect, profile))
                            for s in self.steps)
        fs = self.fs.get(profile)
        return statuses + (f"; {fs.describe()}" if fs is not None else "")


def both(fs: FsExpect | None) -> dict[str, FsExpect | None]:
    """The same filesystem expectation in every profile."""
    return dict.fromkeys(PROFILES, fs)


def gsi_only(fs: FsExpect | None) -> dict[str, FsExpect | None]:
    """A filesystem expectation in the gsi profile only (Linux leaves partial files)."""
    return {"gsi": fs, "linux": None}


Outcome = Literal["PASS", "FAIL", "SKIP"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One scenario's result.

    Attributes:
        outcome: PASS, FAIL or SKIP.
        observed: what the receiver did (statuses, close, filesystem), or why it skipped.
        seconds: wall time of the scenario.
    """

    id: str
    title: str
    sent: str
    expected: str
    observed: str
    outcome: Outcome
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.outcome == "PASS"
