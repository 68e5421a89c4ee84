"""The host side over a real transport: what ``Copy-VMFile`` does, and more.

:class:`HostClient` holds one channel (one connection): it negotiates once and then
copies files one after another, like repeated Copy-VMFile calls. A copy is START,
the file in fragments, COMPLETE. With ``window=1`` exactly one request is in flight
at a time, like the real host; a larger window pipelines WRITEs. Reading the source
(in a worker thread), sending and reading answers overlap (:mod:`host_sim.sender`):
over a plain socket the source is mapped and sent from the mapping (at most about
32 MiB of it mapped in at once), elsewhere memory stays bounded by three buffers of
about 1 MiB of requests.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from gsi.constants import (
    DATA_FRAGMENT,
    HOST_FCOPY_VERSIONS,
    HOST_FRAMEWORK_VERSIONS,
    CopyFlags,
    Status,
    Version,
    describe_status,
)
from gsi.errors import CopyFailed, ProtocolError
from gsi.transports import connect, raw_socket

from .protocol import MAX_WINDOW, Answer, HostConnection
from .sender import DataSender, Progress

__all__ = ["CopyResult", "HostClient", "Progress", "connect_host", "copy_vm_file",
           "explain_status", "open_host", "surface_errors"]

RECEIVE_SIZE = 256 * 1024

_HINTS = {
    Status.ALREADY_EXISTS: "use --force to overwrite",
    Status.PATH_NOT_FOUND: "use --create-full-path to create it",
    Status.ACCESS_DENIED: "the path leaves the guest's destination root or is not writable",
    Status.DISK_FULL: "the guest's disk has too little space",
    Status.INVALIDARG: "the guest refused a field (name, size or fragment); see its log",
}


def explain_status(status: int) -> str:
    """``0x80070050: the file exists (use --force to overwrite)``."""
    hint = _HINTS.get(status)  # type: ignore[call-overload]
    return describe_status(status) + (f" ({hint})" if hint else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyResult:
    source: str
    path_name: str
    file_name: str
    size: int
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"copied {self.source} -> {self.path_name.rstrip('/')}/{self.file_name}: "
                f"{self.size} bytes in {self.seconds:.3f} s ({self.mb_per_s:.1f} MB/s)")


class HostClient:
    """One channel to a guest.

    Args:
        stream: a connected transport stream (see :func:`gsi.transports.connect`).
        fragment_size: data bytes per WRITE (the real host: 6144).
        full_write_body: pad WRITE bodies to full length, as the real host does.
        max_in_flight: requests the connection lets be in flight at once (None: no
            limit; transaction ids then repeat).
    """

    def __init__(self, stream: trio.abc.Stream, *, fragment_size: int = DATA_FRAGMENT,
                 full_write_body: bool = True,
                 max_in_flight: int | None = MAX_WINDOW) -> None:
        self.stream = stream
        self.conn = HostConnection(fragment_size=fragment_size,
                                   full_write_body=full_write_body,
                                   max_in_flight=max_in_flight)
        self.fragment_size = fragment_size
        self.negotiated = False
        # On a socket, answers are received into one reused buffer (the connection
        # copies what it keeps); other streams hand out fresh bytes.
        self._socket = stream.socket if isinstance(stream, trio.SocketStream) else None
        self._raw = raw_socket(stream)
        self._received = memoryview(bytearray(RECEIVE_SIZE if self._socket else 0))

    async def aclose(self) -> None:
        await self.stream.aclose()

    # -- one request at a time -------------------------------------------------

    def poll_answer(self) -> Answer | None:
        """The next answer already received, or None without waiting.

        Raises:
            CopyFailed: the guest broke the protocol.
        """
        try:
            answer = self.conn.next_answer()
        except ProtocolError as exc:
            raise CopyFailed(f"the guest broke the protocol: {exc}") from exc
        return answer if isinstance(answer, Answer) else None

    async def next_answer(self) -> Answer:
        """Wait for the next answer.

        Raises:
            CopyFailed: the guest closed the connection or broke the protocol.
        """
        while (answer := self.poll_answer()) is None:
            if self.conn.closed:
                raise CopyFailed("the guest closed the connection")
            self.conn.receive_data(await self.receive())
        return answer

    async def receive(self) -> bytes | bytearray | memoryview:
        """The next bytes received (empty: the guest closed the stream), valid until the
        next call.

        Raises:
            CopyFailed: the connection was lost.
        """
        try:
            if self._socket is not None:
                return self._received[:await self._socket.recv_into(self._received)]
            return await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise CopyFailed(f"connection lost: {exc}") from exc

    async def send(self, message: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise CopyFailed(f"connection lost: {exc}") from exc

    async def request(self, message: bytes) -> Answer:
        """Send one request and wait for its answer (stop-and-wait)."""
        await self.send(message)
        return await self.next_answer()

    async def negotiate(
        self,
        framework_versions: tuple[Version, ...] = HOST_FRAMEWORK_VERSIONS,
        message_versions: tuple[Version, ...] = HOST_FCOPY_VERSIONS,
    ) -> Answer:
        answer = await self.request(self.conn.negotiate(framework_versions, message_versions))
        if not answer.ok:
            raise CopyFailed(f"version negotiation failed: {explain_status(answer.status)}",
                             status=answer.status)
        self.negotiated = True
        return answer

    # -- a whole copy ----------------------------------------------------------

    async def copy_file(
        self, source: str | os.PathLike[str], dest_dir: str, *, name: str | None = None,
        create_full_path: bool = False, force: bool = False, window: int = 1,
        progress: Progress | None = None,
    ) -> CopyResult:
        """Copy one file, as ``Copy-VMFile -SourcePath source -DestinationPath dest_dir``.

        Raises:
            CopyFailed: a non-zero status (``.status`` holds it) or a lost connection.
            OSError: the source cannot be read.
            InvalidNameError: a name does not fit the 260-unit UTF-16 field.
        """
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"window must be between 1 and {MAX_WINDOW}, not {window}")
        if not self.negotiated:
            await self.negotiate()
        path = Path(source)
        file_name = name if name is not None else path.name
        flags = (CopyFlags.CREATE_PATH if create_full_path else CopyFlags.NONE) | (
            CopyFlags.OVER_WRITE if force else CopyFlags.NONE)
        with path.open("rb", buffering=0) as f:
            size = os.fstat(f.fileno()).st_size
            started = time.perf_counter()
            start = self.conn.start_copy(file_name=file_name, path_name=dest_dir,
                                         flags=flags, file_size=size)
            self._check(await self.request(start), "START")
            await self._send_data(f, size, window, progress)
            self._check(await self.request(self.conn.complete()), "COMPLETE")
            seconds = time.perf_counter() - started
        return CopyResult(source=str(source), path_name=dest_dir, file_name=file_name,
                          size=size, seconds=seconds)

    @staticmethod
    def _check(answer: Answer, what: str) -> None:
        if not answer.ok:
            raise CopyFailed(f"{what} refused: {explain_status(answer.status)}",
                             status=answer.status)

    async def _send_data(self, f: io.RawIOBase, size: int, window: int,
                         progress: Progress | None) -> None:
        sender = DataSender(self.conn, send=self.send, receive=self.receive,
                            poll=self.poll_answer, check=self._check, sock=self._raw,
                            buffer=self._received)
        with surface_errors():
            await sender.run(f, size, window, progress)


@contextmanager
def surface_errors() -> Iterator[None]:
    """Raise the first CopyFailed or OSError of an ExceptionGroup as itself.

    trio wraps a task's error in an ExceptionGroup; the copies document (and the CLI
    catches) CopyFailed / OSError themselves.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        failed, _ = group.split((CopyFailed, OSError))
        if failed is None:
            raise
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def connect_host(url: str, *, fragment_size: int = DATA_FRAGMENT,
                       full_write_body: bool = True, native: bool | None = None,
                       max_in_flight: int | None = MAX_WINDOW) -> HostClient:
    """A channel to the guest at ``url``; the caller closes it.

    Every connection host_sim opens to a guest goes through here (clean copies, trees,
    the fault host and its idle connections), so the transport options apply to all.
    ``native`` (hyperv:// only) forces trio's native stream (True) or the thread-backed
    one (False); None probes the socket. See :func:`gsi.transports.connect`.
    """
    stream = await connect(url, native=native)
    return HostClient(stream, fragment_size=fragment_size, full_write_body=full_write_body,
                      max_in_flight=max_in_flight)


@asynccontextmanager
async def open_host(url: str, *, fragment_size: int = DATA_FRAGMENT,
                    full_write_body: bool = True,
                    native: bool | None = None) -> AsyncIterator[HostClient]:
    """Connect to a guest at ``url`` (:func:`connect_host`) and close the channel
    afterwards."""
    client = await connect_host(url, fragment_size=fragment_size,
                                full_write_body=full_write_body, native=native)
    try:
        yield client
    finally:
        await trio.aclose_forcefully(client.stream)


async def copy_vm_file(
    url: str, source: str | os.PathLike[str], dest_dir: str, *, name: str | None = None,
    create_full_path: bool = False, force: bool = False,
    fragment_size: int = DATA_FRAGMENT, window: int = 1, progress: Progress | None = None,
    native: bool | None = None,
) -> CopyResult:
    """One Copy-VMFile over a fresh connection to ``url`` (``native``: see open_host)."""
    async with open_host(url, fragment_size=fragment_size, native=native) as host:
        return await host.copy_file(source, dest_dir, name=name,
                                    create_full_path=create_full_path, force=force,
                                    window=window, progress=progress)
