"""``host-sim copy --fault SPEC``: run a fault plan over copies and print the reports."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import trio

from gsi.constants import DATA_FRAGMENT, describe_status

from .fault_plan import FaultPlan, FaultReport
from .faults import FaultyHost

__all__ = ["copy_files", "describe", "run_cli"]


def describe(report: FaultReport) -> str:
    """The report, one line, with the statuses spelled out for a terminal."""
    lines = [str(report)]
    for status in sorted({a.status for a in report.answers if a.status}):
        lines.append(f"  {describe_status(status)}")
    return "\n".join(lines)


async def copy_files(url: str, sources: Sequence[str | os.PathLike[str]], dest_dir: str,
                     plan: FaultPlan, *, name: str | None = None,
                     create_full_path: bool = False, force: bool = False,
                     fragment_size: int = DATA_FRAGMENT, full_write_body: bool = True,
                     window: int = 1, answer_timeout: float = 30.0,
                     native: bool | None = None,
                     on_report: Callable[[FaultReport], None] | None = None,
                     ) -> list[FaultReport]:
    """Copy files one after another over one channel (reconnecting after a closed one),
    applying ``plan`` to each copy (``copy=K`` faults to copy K only); ``native``: see
    :class:`FaultyHost`."""
    reports = []
    async with FaultyHost(url, fragment_size=fragment_size, full_write_body=full_write_body,
                          window=window, answer_timeout=answer_timeout,
                          native=native) as host:
        for source in sources:
            report = await host.copy(source, dest_dir, name=name, plan=plan,
                                     create_full_path=create_full_path, force=force)
            if on_report is not None:
                on_report(report)
            reports.append(report)
    return reports


def run_cli(args: Any, sources: Sequence[str | os.PathLike[str]], dest_dir: str) -> int:
    """``host-sim copy --fault SPEC...``: print one report per copy; exit status 0 if every
    copy committed, else 1."""
    from .cli import TRANSPORT_MODES

    plan = FaultPlan(tuple(args.fault))
    reports = trio.run(functools.partial(
        copy_files, args.to, sources, dest_dir, plan, name=args.name,
        create_full_path=args.create_full_path, force=args.force,
        fragment_size=args.fragment_size, full_write_body=not args.trimmed_writes,
        window=args.window, native=TRANSPORT_MODES[args.transport_mode],
        on_report=lambda r: print(describe(r), flush=True)))
    return 0 if all(r.committed for r in reports) else 1
