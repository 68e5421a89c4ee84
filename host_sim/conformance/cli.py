"""``host-sim check``: the conformance checker's command line."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import trio

from gsi.constants import DATA_FRAGMENT
from gsi.transports import TransportError, parse_url

from .catalogue import CATALOGUE, select
from .model import PROFILES
from .report import listing, row, summary, write_junit
from .runner import DEFAULT_TIMEOUT, check

EPILOG = """\
examples:
  host-sim check --to unix:///run/gsi.sock --guest-root /srv/incoming
  host-sim check --to tcp://127.0.0.1:5005 --profile linux --only 'negotiate.*' --only names
  host-sim check --list

Exit status: 0 every scenario passed or was skipped, 1 a scenario failed, 2 bad usage or
no receiver at URL. Scenarios and profiles: docs/conformance.md.
"""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``check`` on the ``host-sim`` subcommands."""
    p = sub.add_parser("check", help="check a receiver against the protocol's rules",
                       description="Run the conformance catalogue against a receiver, one "
                                   "fresh connection per scenario.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", metavar="URL", help="the receiver: tcp://HOST:PORT, "
                   "unix:///path, vsock://CID:PORT, hyperv://VMID/SERVICEID, "
                   "vmbus-emu:///path (required unless --list)")
    p.add_argument("--profile", choices=PROFILES, default="gsi",
                   help="whose rules: gsi (PROTOCOL.md section 8, default) or linux "
                        "(what hv_fcopy_uio_daemon answers)")
    p.add_argument("--guest-root", type=Path, metavar="DIR",
                   help="the receiver's destination root, reachable here: enables the "
                        "filesystem checks (else they are skipped)")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN",
                   help="run only matching scenarios: an id, a topic (negotiate) or a "
                        "shell pattern ('names.*'); repeatable")
    p.add_argument("--list", action="store_true", help="list the scenarios and exit")
    p.add_argument("--junit", type=Path, metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="S",
                   help="seconds a scenario may take before it fails (default %(default)s)")
    p.add_argument("--max-fragment", type=int, default=DATA_FRAGMENT, metavar="N",
                   help="the receiver's maximum fragment (gsi-receiver --max-fragment; "
                        "default %(default)s)")


def _usage(message: str) -> int:
    print(f"host-sim check: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """``host-sim check`` with parsed arguments; the exit status."""
    chosen = select(CATALOGUE, args.only)
    if args.only and not chosen:
        return _usage(f"no scenario matches {' '.join(args.only)} (see --list)")
    if args.list:
        print("\n".join(listing(chosen)))
        return 0
    if args.max_fragment < 1:
        return _usage(f"--max-fragment must be at least 1, not {args.max_fragment}")
    if not args.to:
        return _usage("--to URL is required (or --list)")
    try:
        parse_url(args.to)
    except TransportError as exc:
        return _usage(str(exc))
    if args.guest_root is not None and not args.guest_root.is_dir():
        return _usage(f"--guest-root {args.guest_root} is not a directory")
    try:
        results = trio.run(functools.partial(
            check, args.to, profile=args.profile, guest_root=args.guest_root,
            only=args.only, timeout=args.timeout, max_fragment=args.max_fragment))
    except TransportError as exc:
        return _usage(str(exc))
    except OSError as exc:
        print(f"host-sim check: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    for result in results:
        print(row(result), flush=True)
    print(summary(results))
    if args.junit is not None:
        write_junit(args.junit, results, profile=args.profile, url=args.to)
    return 1 if any(r.outcome == "FAIL" for r in results) else 0
