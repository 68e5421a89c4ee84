"""``host-sim trace show|export`` and ``host-sim replay``: the command-line side of traces."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import trio

from gsi.errors import GsiError
from gsi.server import ReceiverConfig, config_options
from gsi.trace import Trace, read_trace

from .cli_util import bad_url
from .pcapng import export_pcapng
from .replayer import replay
from .trace_decode import render_trace

REPLAY_EPILOG = """\
The receiver should start from an empty destination root and be configured like the
recording one (the trace's "options"; differences from the defaults are printed).
Exit status: 0 every answer as recorded, 1 a difference (or the replay could not finish),
2 bad usage or an unreadable trace.
"""


def add_trace_commands(sub: Any) -> None:
    """Register ``trace`` (``show``, ``export``) and ``replay`` on the host-sim parser."""
    t = sub.add_parser("trace", help="read a session trace (gsi-receiver --trace DIR)",
                       description="Read a session trace recorded by gsi-receiver --trace "
                                   "(format: docs/traces.md).")
    tsub = t.add_subparsers(dest="trace_command", required=True)
    show = tsub.add_parser("show", help="list every message with every field named")
    show.add_argument("trace", type=Path, metavar="TRACE")
    show.set_defaults(handler=_show)
    export = tsub.add_parser("export", help="write the trace as pcapng (TCP over loopback)")
    export.add_argument("trace", type=Path, metavar="TRACE")
    export.add_argument("out", type=Path, metavar="OUT.pcapng")
    export.set_defaults(handler=_export)
    r = sub.add_parser("replay", help="replay a trace's host side and compare the answers",
                       description="Send the host side of TRACE to a receiver, paced as "
                                   "recorded, and compare every answer with the recorded "
                                   "one.", epilog=REPLAY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("trace", type=Path, metavar="TRACE")
    r.add_argument("--to", required=True, metavar="URL", help="the receiver")
    r.add_argument("--status-only", action="store_true",
                   help="compare only each answer's status, not every byte")
    r.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for an answer (default %(default)s)")
    r.set_defaults(handler=_replay)


def _load(path: Path) -> Trace | None:
    try:
        return read_trace(path)
    except (OSError, GsiError) as exc:
        print(f"host-sim: cannot read trace {path}: {exc}", file=sys.stderr)
        return None


def _show(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if trace is None:
        return 2
    for line in render_trace(trace, str(args.trace)):
        print(line)
    return 0


def _export(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if trace is None:
        return 2
    try:
        args.out.write_bytes(export_pcapng(trace))
    except OSError as exc:
        print(f"host-sim: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {len(trace.records)} records as TCP 127.0.0.1:49152 -> "
          "127.0.0.2:5005")
    return 0


def option_notes(trace: Trace) -> list[str]:
    """The recorded receiver options that differ from the defaults."""
    options = trace.metadata.get("options")
    if not isinstance(options, dict):
        return []
    defaults = ReceiverConfig(root=Path("."))
    return [f"{name}={value!r}" for name, value in config_options(options).items()
            if getattr(defaults, name) != value]


def _replay(args: argparse.Namespace) -> int:
    trace = _load(args.trace)
    if trace is None:
        return 2
    if bad_url(args.to):
        return 2
    notes = option_notes(trace)
    if notes:
        print(f"recorded with receiver options {', '.join(notes)}: the receiver must match")
    try:
        report = trio.run(functools.partial(replay, trace, args.to,
                                            status_only=args.status_only,
                                            timeout=args.timeout))
    except (GsiError, OSError) as exc:
        print(f"host-sim: {exc}", file=sys.stderr)
        return 1
    for difference in report.differences:
        print(difference)
    if report.problem:
        print(f"replay stopped: {report.problem}")
    what = "statuses" if args.status_only else "bytes"
    print(f"replayed {report.sent} host messages; {len(report.answers)} answers; "
          f"{len(report.differences)} differences ({what} compared)")
    return 1 if report.differences else 0
