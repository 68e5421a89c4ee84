"""``gsi-receiver``: serve guest file copies into a destination root."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
from pathlib import Path

import trio

from ._version import __version__
from .constants import DATA_FRAGMENT
from .errors import AcceptError, GsiError
from .server import Receiver, ReceiverConfig
from .transports import (
    TransportError,
    VsockAddress,
    listener_url,
    open_listeners,
    parse_url,
    vsock_port_to_service_guid,
)

log = logging.getLogger("gsi.receiver")

EXIT_SERVING_FAILED = 1
"""Exit status when serving fails after startup (a listener's accept failed); startup and
usage errors exit with 2."""

TRANSPORT_MODES: dict[str, bool | None] = {"auto": None, "native": True, "threaded": False}
"""``--transport-mode`` -> the ``native`` argument of ``gsi.transports.open_listeners``."""

EPILOG = """\
URLs: tcp://HOST:PORT (port 0 picks a free port), unix:///abs/path,
vsock://CID:PORT (CID -1 = any, for a Linux guest on Hyper-V: hv_sock),
vmbus://[INSTANCE] (the real fcopy channel bound to uio_hv_generic, in place of
hv_fcopy_uio_daemon: stock Copy-VMFile; see docs/vmbus.md),
vmbus-emu:///abs/path[?ring_size=0x4000] (an emulated channel for host-sim),
hyperv://VMID/SERVICEID (AF_HYPERV: Windows, Python 3.12+; docs/windows-host.md).

examples:
  gsi-receiver --root /srv/incoming --listen unix:///run/gsi.sock
  gsi-receiver --root /srv/incoming --listen tcp://127.0.0.1:0 --no-fsync
  gsi-receiver --root /srv/incoming --listen vsock://-1:5005
  gsi-receiver --root /srv/incoming --listen vmbus:// --idle-timeout 3600
  gsi-receiver --root /tmp/in --listen 'vmbus-emu:///tmp/gsi-ring?ring_size=0x5000'
"""


def _positive_int(text: str) -> int:
    value = int(text, 0)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def _uid(text: str) -> int:
    value = int(text, 10)
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"{text} is not a uid")
    return value


def _mode(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o7777:
        raise argparse.ArgumentTypeError(f"{text} is not a file mode")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gsi-receiver",
        description="Receive Hyper-V guest file copies (the Copy-VMFile protocol) into a "
                    "destination root. Guest path /a/b lands at ROOT/a/b; nothing is ever "
                    "written outside ROOT.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--root", type=Path, required=True,
                   help="destination root directory (must exist)")
    p.add_argument("--listen", action="append", required=True, metavar="URL",
                   help="where to accept connections; repeatable")
    p.add_argument("--no-fsync", action="store_true",
                   help="skip fsync of file and directory on COMPLETE (benchmarking only)")
    p.add_argument("--max-fragment", type=_positive_int, default=DATA_FRAGMENT, metavar="N",
                   help="largest WRITE data size accepted (default %(default)s)")
    p.add_argument("--idle-timeout", type=_positive_float, default=60.0, metavar="S",
                   help="drop a connection silent for S seconds (default %(default)s)")
    p.add_argument("--message-timeout", type=_positive_float, default=10.0, metavar="S",
                   help="drop a connection whose message is not complete S seconds after "
                        "its first byte (default %(default)s)")
    p.add_argument("--max-connections", type=_positive_int, default=256, metavar="N",
                   help="connections served at once; at the limit a new one evicts the "
                        "longest-idle connection with no open copy, or is closed if every "
                        "one has a copy open (default %(default)s)")
    p.add_argument("--allow-uid", type=_uid, action="append", default=[], metavar="UID",
                   help="unix:// listeners only: accept peers running as UID (SO_PEERCRED); "
                        "repeatable; default: any local user that can open the socket. "
                        "TCP listeners are open to every local user")
    p.add_argument("--temp-files", choices=["auto", "named"], default="auto",
                   help="auto: unnamed temp files (O_TMPFILE) where the filesystem has "
                        "them, named .gsi-*.part files elsewhere, and everywhere if "
                        "/proc/self/fd cannot link them (checked at start); named: always "
                        "named (default %(default)s)")
    p.add_argument("--max-file-size", type=_positive_int, default=(1 << 64) - 1,
                   metavar="BYTES", help="refuse larger files at START with 0x80070057")
    p.add_argument("--file-mode", type=_mode, default=None, metavar="OCTAL",
                   help="mode of received files (default 0644 less the umask)")
    p.add_argument("--grace-period", type=_positive_float, default=10.0, metavar="S",
                   help="on SIGINT/SIGTERM, seconds open copies get to finish "
                        "(default %(default)s)")
    p.add_argument("--preallocate", action="store_true",
                   help="reserve each file's space at START")
    p.add_argument("--no-free-space-check", action="store_true",
                   help="do not refuse a START whose file_size exceeds the free space")
    p.add_argument("--trim-write-echo", action="store_true",
                   help="answer WRITEs without echoing their data")
    p.add_argument("--linux-status-codes", action="store_true",
                   help="answer only with the status codes the Linux daemons use")
    p.add_argument("--linux-create-path", action="store_true",
                   help="with CREATE_PATH, create the last directory only when the path "
                        "ends in '/', as the Linux daemons do")
    p.add_argument("--busy-poll", type=_non_negative_int, default=0, metavar="MICROSECONDS",
                   help="after answering, keep trying a non-blocking receive for up to this "
                        "long before sleeping (sockets only; costs CPU; default 0: off)")
    p.add_argument("--transport-mode", choices=list(TRANSPORT_MODES), default="auto",
                   help="hyperv:// listeners only: trio's native socket listener, a "
                        "thread-backed one, or auto (probe; default)")
    p.add_argument("--trace", type=Path, default=None, metavar="DIR",
                   help="record each connection's bytes, both directions, into a new file "
                        "in DIR (docs/traces.md; host-sim trace/replay read them)")
    p.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log level on stderr (default %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> ReceiverConfig:
    return ReceiverConfig(
        root=args.root, fsync=not args.no_fsync, max_fragment=args.max_fragment,
        idle_timeout=args.idle_timeout, message_timeout=args.message_timeout,
        max_connections=args.max_connections, allow_uids=tuple(args.allow_uid),
        temp_files=args.temp_files,
        max_file_size=args.max_file_size, file_mode=args.file_mode,
        grace_period=args.grace_period, preallocate=args.preallocate,
        check_free_space=not args.no_free_space_check,
        trim_write_echo=args.trim_write_echo, linux_status_codes=args.linux_status_codes,
        linux_create_path=args.linux_create_path, trace=args.trace,
        busy_poll=args.busy_poll)


async def run(config: ReceiverConfig, urls: list[str], native: bool | None = None) -> None:
    """Open every listener, announce it on stdout, serve until SIGINT/SIGTERM.

    ``native`` is passed to ``open_listeners`` (it only matters for hyperv://).
    """
    receiver = Receiver(config)
    listeners = []
    try:
        for url in urls:
            listeners.extend(await open_listeners(url, native=native))
    except BaseException:
        for listener in listeners:
            await trio.aclose_forcefully(listener)
        receiver.sink.close()
        raise
    async with trio.open_nursery() as nursery:
        await nursery.start(_watch_signals, receiver, nursery.cancel_scope, config.grace_period)
        async with trio.open_nursery() as serving:
            await serving.start(receiver.serve, listeners)
            for listener in listeners:
                bound = listener_url(listener)
                print(f"listening on {bound}", flush=True)
                for line in _listener_notes(bound):
                    print(line, flush=True)
        nursery.cancel_scope.cancel()
    s = receiver.stats
    log.info("stopped: %d connections (%d refused, %d evicted), %d copies committed "
             "(%d bytes), %d failed", s.connections, s.refused_connections,
             s.evicted_connections, s.committed, s.bytes_committed, s.failed)


async def _watch_signals(receiver: Receiver, everything: trio.CancelScope, grace: float, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """First SIGINT/SIGTERM: graceful shutdown. A second one: abort open copies now."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        stopping = False
        async for signum in signals:
            name = signal.Signals(signum).name
            if stopping:
                log.warning("%s again: aborting open copies now", name)
                everything.cancel()
                return
            log.info("%s: shutting down (open copies get %.1f s)", name, grace)
            receiver.shutdown()
            stopping = True


def _listener_notes(url: str) -> list[str]:
    """What a host needs besides the URL: the Hyper-V service GUID of a vsock port."""
    address = parse_url(url)
    if isinstance(address, VsockAddress):
        guid = vsock_port_to_service_guid(address.port)
        return [f"hyper-v service id: {guid} (register it on the host; see docs)"]
    return []


def _accept_failure(group: BaseExceptionGroup[BaseException]) -> AcceptError | None:
    """The first AcceptError of ``group`` if it holds nothing else (nested groups are what
    trio's nurseries make of one failed accept loop), else None."""
    accept_errors, rest = group.split(AcceptError)
    if accept_errors is None or rest is not None:
        return None
    first: BaseException = accept_errors
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, AcceptError)
    return first


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root: Path = args.root
    if not root.is_dir():
        print(f"gsi-receiver: --root {root} is not an existing directory", file=sys.stderr)
        return 2
    if args.trace is not None and not (args.trace.is_dir()
                                       and os.access(args.trace, os.W_OK | os.X_OK)):
        print(f"gsi-receiver: --trace {args.trace} is not a writable directory",
              file=sys.stderr)
        return 2
    try:
        for url in args.listen:
            parse_url(url)
    except TransportError as exc:
        print(f"gsi-receiver: {exc}", file=sys.stderr)
        return 2
    log.info("gsi-receiver %s (Python %s, trio %s)", __version__,
             platform.python_version(), trio.__version__)
    try:
        trio.run(run, config_from_args(args), args.listen,
                 TRANSPORT_MODES[args.transport_mode])
    except (TransportError, OSError) as exc:
        print(f"gsi-receiver: cannot listen: {exc}", file=sys.stderr)
        return 2
    except BaseExceptionGroup as group:
        failure = _accept_failure(group)
        if failure is None:
            raise
        print(f"gsi-receiver: {failure}; stopped (open copies aborted)", file=sys.stderr)
        return EXIT_SERVING_FAILED
    except GsiError as exc:
        print(f"gsi-receiver: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
