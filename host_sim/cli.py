"""``host-sim``: push files into a guest as Copy-VMFile does."""

from __future__ import annotations

import argparse
import logging
import posixpath
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from gsi._version import __version__
from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    Version,
)
from gsi.errors import CopyFailed, GsiError

from .cli_util import bad_url
from .client import CopyResult, HostClient, Progress, open_host
from .conformance import cli as check_cli
from .fault_cli import run_cli as run_faulty
from .fault_plan import Fault, FaultSpecError, parse_fault
from .protocol import MAX_WINDOW
from .trace_cli import add_trace_commands
from .tree_cli import add_tree_options, run_tree_copy

TRANSPORT_MODES: dict[str, bool | None] = {"auto": None, "native": True, "threaded": False}
"""``--transport-mode`` -> the ``native`` argument of ``gsi.transports.connect``."""

EPILOG = """\
examples:
  host-sim copy --to unix:///run/gsi.sock report.pdf /home/user/
  host-sim copy --to tcp://127.0.0.1:5005 --create-full-path --force a.bin b.bin /data/new/
  host-sim copy --to unix:///run/gsi.sock --window 32 --fragment-size 65536 big.img /images/
  host-sim copy --to hyperv://VMID/0000138d-facb-11e6-bd58-64006a7986d3 report.pdf /in/
  host-sim copy --to unix:///run/gsi.sock --fault stall:at=write:10,seconds=5 a.bin /data/
  host-sim copy --to vmbus-emu:///tmp/gsi-ring report.pdf /in/  (a receiver's emulated
      vmbus channel: gsi-receiver --listen vmbus-emu:///tmp/gsi-ring; docs/vmbus.md)

Like Copy-VMFile -SourcePath SOURCE -DestinationPath DEST_DIR -FileSource Host:
--force is -Force (overwrite), --create-full-path is -CreateFullPath.
Exit status: 0 all copied, 1 a copy failed (the guest's status is printed), 2 bad usage.
"""


def _window(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_WINDOW:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_WINDOW}, not {value}")
    return value


def _fragment(text: str) -> int:
    value = int(text, 0)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _versions(text: str) -> tuple[Version, ...]:
    """``1.0,3.0`` -> ((1, 0), (3, 0))."""
    versions = []
    for item in text.split(","):
        major, dot, minor = item.strip().partition(".")
        if not (dot and major.isdigit() and minor.isdigit()) or max(
                int(major), int(minor)) > 0xFFFF:
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a version MAJOR.MINOR (e.g. 1.0,3.0)")
        versions.append((int(major), int(minor)))
    return tuple(versions)


def _fault(text: str) -> Fault:
    try:
        return parse_fault(text)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """The whole ``host-sim`` parser."""
    return _build_parsers()[0]


def _build_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The ``host-sim`` parser and its ``copy`` subparser."""
    p = argparse.ArgumentParser(prog="host-sim",
                                description="Hyper-V host simulator for the guest "
                                            "file-copy protocol.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("copy", help="copy files into the guest, one after another",
                       description="Copy files into the guest over one connection, one "
                                   "after another, like repeated Copy-VMFile calls.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--to", required=True, metavar="URL",
                   help="the guest: tcp://HOST:PORT, unix:///path, vsock://CID:PORT, "
                        "hyperv://VMID/SERVICEID, vmbus-emu:///path")
    c.add_argument("paths", nargs="+", metavar="SOURCE... DEST_DIR",
                   help="files to copy, then the guest directory (path_name)")
    c.add_argument("--name", help="file name in the guest (one SOURCE only; default: "
                                  "the source's base name)")
    c.add_argument("--create-full-path", action="store_true",
                   help="create missing directories (-CreateFullPath)")
    c.add_argument("--force", action="store_true",
                   help="overwrite an existing file (-Force)")
    c.add_argument("--fragment-size", type=_fragment, default=DATA_FRAGMENT, metavar="N",
                   help="data bytes per WRITE (default %(default)s, like the real host; "
                        "the guest must accept it: gsi-receiver --max-fragment)")
    c.add_argument("--window", type=_window, default=1, metavar="N",
                   help="WRITEs in flight (default 1: stop-and-wait like the real host)")
    c.add_argument("--trimmed-writes", action="store_true",
                   help="send WRITE bodies of 52+size bytes instead of full length")
    c.add_argument("--transport-mode", choices=list(TRANSPORT_MODES), default="auto",
                   help="hyperv:// only: trio's native socket stream, a thread-backed one, "
                        "or auto (probe whether trio can poll the socket; default)")
    c.add_argument("--fault", action="append", type=_fault, default=[], metavar="SPEC",
                   help="inject a fault, KIND[:KEY=VALUE,...] (repeatable; every kind and "
                        "what the guest should do: docs/faults.md); prints a report per "
                        "copy, exit status 1 if a copy was not committed")
    c.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on when stdout is a terminal)")
    c.add_argument("--destination-is-file", action="store_true",
                   help="DEST is the guest file's full path (path_name = its directory, "
                        "file_name = its last component), as Windows guests read "
                        "-DestinationPath; one SOURCE only. How the real host splits "
                        "-DestinationPath is unconfirmed: this picks the other reading")
    c.add_argument("--framework-versions", type=_versions, default=HOST_FRAMEWORK_VERSIONS,
                   metavar="LIST", help="framework versions offered in NEGOTIATE "
                   "(default 1.0,3.0; what a Windows host offers is unconfirmed)")
    c.add_argument("--message-versions", type=_versions, default=HOST_FCOPY_VERSIONS,
                   metavar="LIST", help="fcopy message versions offered (default 1.1)")
    check_cli.add_parser(sub)
    add_tree_options(c)
    add_trace_commands(sub)
    return p, c


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int], Progress] | None]:
    """Yields a factory of per-file progress callbacks, or None."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )

    with RichProgress("{task.description}", BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), TimeRemainingColumn()) as bar:
        def factory(label: str, total: int) -> Progress:
            task = bar.add_task(label, total=total)
            return lambda done, _total: bar.update(task, completed=done)
        yield factory


async def copy_all(args: argparse.Namespace, sources: list[Path], dest: str,
                   progress: Callable[[str, int], Progress] | None) -> list[CopyResult]:
    results = []
    async with open_host(args.to, fragment_size=args.fragment_size,
                         full_write_body=not args.trimmed_writes,
                         native=TRANSPORT_MODES[args.transport_mode]) as host:
        await host.negotiate(args.framework_versions, args.message_versions)
        for source in sources:
            results.append(await _copy_one(host, args, source, dest, progress))
            print(results[-1], flush=True)
    return results


async def _copy_one(host: HostClient, args: argparse.Namespace, source: Path, dest: str,
                    progress: Callable[[str, int], Progress] | None) -> CopyResult:
    callback = progress(source.name, source.stat().st_size) if progress else None
    try:
        return await host.copy_file(source, dest, name=args.name,
                                    create_full_path=args.create_full_path, force=args.force,
                                    window=args.window, progress=callback)
    except CopyFailed as exc:
        raise CopyFailed(f"copy of {source} failed: {exc}", status=exc.status) from exc


def main(argv: list[str] | None = None) -> int:
    parser, copy_parser = _build_parsers()
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["copy"]:
        # Options may follow the file list: `copy a b --force /dest/`.
        args = copy_parser.parse_intermixed_args(argv[1:], argparse.Namespace(command="copy"))
    else:
        args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.command == "check":
        return check_cli.run(args)
    if args.command != "copy":
        return int(args.handler(args))
    if len(args.paths) < 2:
        copy_parser.error("copy needs at least one SOURCE and a DEST_DIR")
    *source_names, dest = args.paths
    sources = [Path(s) for s in source_names]
    if args.recursive or args.follow_symlinks:
        return run_tree_copy(copy_parser, args, sources, dest)
    if args.name is not None and len(sources) > 1:
        copy_parser.error("--name works with one SOURCE only")
    if args.destination_is_file:
        if len(sources) > 1 or args.name is not None:
            copy_parser.error("--destination-is-file takes one SOURCE and no --name")
        dest, args.name = posixpath.split(dest)
        if not args.name:
            copy_parser.error("--destination-is-file needs DEST to end in a file name")
        dest = dest or "."
    for source in sources:
        if not source.is_file():
            print(f"host-sim: {source} is not a readable file", file=sys.stderr)
            return 2
    if bad_url(args.to):
        return 2
    if args.fault:
        try:
            return run_faulty(args, sources, dest)
        except (GsiError, OSError) as exc:
            print(f"host-sim: {exc}", file=sys.stderr)
            return 1
    show = sys.stdout.isatty() if args.progress is None else args.progress
    try:
        with _progress_bar(show) as progress:
            results = trio.run(copy_all, args, sources, dest, progress)
    except CopyFailed as exc:
        print(f"host-sim: {exc}", file=sys.stderr)
        return 1
    except (GsiError, OSError) as exc:
        print(f"host-sim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if len(results) > 1:
        total = sum(r.size for r in results)
        seconds = sum(r.seconds for r in results)
        print(f"{len(results)} files, {total} bytes in {seconds:.3f} s "
              f"({total / seconds / 1e6 if seconds else 0:.1f} MB/s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
