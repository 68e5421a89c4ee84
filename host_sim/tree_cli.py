"""``host-sim copy --recursive``: whole trees over one connection, one progress bar."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

from gsi.errors import CopyFailed, GsiError
from gsi.transports import TransportError, parse_url

from .client import open_host
from .tree import TreeError, TreePlan, TreeProgress, TreeResult, plan_tree, send_tree


def add_tree_options(copy_parser: argparse.ArgumentParser) -> None:
    copy_parser.add_argument(
        "-r", "--recursive", action="store_true",
        help="SOURCEs may be directories: copy whole trees (SRC_DIR's name becomes a "
             "directory under DEST_DIR, like cp -r), each file with CREATE_PATH; empty "
             "directories, symlinks and non-regular files are reported and skipped")
    copy_parser.add_argument(
        "--follow-symlinks", action="store_true",
        help="with --recursive: follow symlinks inside the trees (loops are skipped)")


@contextmanager
def _tree_bar(enabled: bool, plan: TreePlan) -> Iterator[TreeProgress | None]:
    """One bar for the whole tree: files done of all, bytes done of all."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    files = len(plan.files)
    with Progress("{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn()) as bar:
        task = bar.add_task(f"0/{files} files", total=plan.total_bytes)

        def update(done: int, acked: int) -> None:
            bar.update(task, completed=acked, description=f"{done}/{files} files")
        yield update


async def _copy(args: argparse.Namespace, plan: TreePlan, native: bool | None,
                progress: TreeProgress | None) -> TreeResult:
    async with open_host(args.to, fragment_size=args.fragment_size,
                         full_write_body=not args.trimmed_writes, native=native) as host:
        await host.negotiate(args.framework_versions, args.message_versions)
        return await send_tree(host, plan, force=args.force, window=args.window,
                               progress=progress)


def run_tree_copy(parser: argparse.ArgumentParser, args: Any, sources: list[Path],
                  dest: str) -> int:
    """``host-sim copy --recursive``; the exit status."""
    if args.name is not None or args.destination_is_file or args.fault:
        parser.error("--recursive does not combine with --name, --destination-is-file "
                     "or --fault")
    if args.follow_symlinks and not args.recursive:
        parser.error("--follow-symlinks needs --recursive")
    try:
        parse_url(args.to)
        plan = plan_tree(sources, dest, follow_symlinks=args.follow_symlinks)
    except (TransportError, TreeError) as exc:
        print(f"host-sim: {exc}", file=sys.stderr)
        return 2
    for line in plan.skipped_lines():
        print(line, flush=True)
    from .cli import TRANSPORT_MODES

    show = sys.stdout.isatty() if args.progress is None else args.progress
    try:
        with _tree_bar(show, plan) as progress:
            result = trio.run(_copy, args, plan, TRANSPORT_MODES[args.transport_mode],
                              progress)
    except (GsiError, OSError) as exc:
        kind = "" if isinstance(exc, CopyFailed) else "error: "
        print(f"host-sim: {kind}{exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(result, flush=True)
    return 0
