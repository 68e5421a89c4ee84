"""What the host-sim subcommands share: the one-line usage error for a bad ``--to`` URL."""

from __future__ import annotations

import sys

from gsi.transports import TransportError, parse_url


def bad_url(url: str) -> bool:
    """True, after printing ``host-sim: REASON`` on stderr, if ``url`` cannot be parsed."""
    try:
        parse_url(url)
    except TransportError as exc:
        print(f"host-sim: {exc}", file=sys.stderr)
        return True
    return False
