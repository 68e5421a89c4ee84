"""Unix sockets: a listener that owns its socket file, and a connector.

The listener replaces a stale socket file (one nobody listens on) but never a regular file,
a directory, or a socket someone is still listening on; on close it removes the file it
created, and only that file (it checks device and inode first).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat

import trio

from .base import DEFAULT_SOCKET_BUFFER, TransportError, os_reason, tune_socket
from .url import UnixAddress, format_url


def _unix_family(url: str) -> socket.AddressFamily:
    family: socket.AddressFamily | None = getattr(socket, "AF_UNIX", None)
    if family is None:
        raise TransportError(f"cannot use {url}: Unix sockets are not available here")
    return family


def _remove_stale(path: str, url: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(
            f"cannot listen on {url}: {path} exists and is not a socket; "
            "refusing to replace it (remove it or pick another path)"
        )
    probe = socket.socket(_unix_family(url), socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        pass  # stale: nobody listens
    except BlockingIOError:
        raise TransportError(
            f"cannot listen on {url}: another process is listening there"
        ) from None
    except OSError as exc:
        raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
    else:
        raise TransportError(f"cannot listen on {url}: another process is listening there")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class UnixSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A ``trio.SocketListener`` that also removes its socket file when closed.

    Accepted Unix sockets do not inherit the listening socket's buffer sizes, so ``accept``
    sets ``buffer_size`` on each stream (None: the OS default; see ``tune_socket``).

    Attributes:
        socket: the trio listening socket.
        path: the socket file.
    """

    def __init__(self, listener: trio.SocketListener, path: str, *,
                 buffer_size: int | None = None) -> None:
        self._listener = listener
        self._buffer_size = buffer_size
        self.socket = listener.socket
        self.path = path
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)

    async def accept(self) -> trio.SocketStream:
        stream = await self._listener.accept()
        tune_socket(stream.socket, self._buffer_size)
        return stream

    def _unlink(self) -> None:
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def aclose(self) -> None:
        """Close the socket, then remove the file if it is still the one we bound."""
        if self.socket.fileno() != -1:
            self.socket.close()
            self._unlink()
        await trio.lowlevel.checkpoint()


async def open_unix_listener(
    address: UnixAddress, *, buffer_size: int | None = DEFAULT_SOCKET_BUFFER
) -> UnixSocketListener:
    """Bind and listen on ``address.path`` (after removing a stale socket file there).

    ``buffer_size``: SO_SNDBUF/SO_RCVBUF of every accepted stream (see ``tune_socket``).
    """
    url = format_url(address)
    _remove_stale(address.path, url)
    sock = trio.socket.socket(_unix_family(url), socket.SOCK_STREAM)
    try:
        await sock.bind(address.path)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
        raise
    try:
        sock.listen(socket.SOMAXCONN)
        return UnixSocketListener(trio.SocketListener(sock), address.path,
                                  buffer_size=buffer_size)
    except BaseException as exc:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(address.path)  # the file our bind just created
        if isinstance(exc, OSError):
            raise TransportError(f"cannot listen on {url}: {os_reason(exc)}") from exc
        raise


async def connect_unix(
    address: UnixAddress, *, buffer_size: int | None = DEFAULT_SOCKET_BUFFER
) -> trio.SocketStream:
    """Connect to the socket at ``address.path``; ``buffer_size`` as for ``tune_socket``."""
    url = format_url(address)
    _unix_family(url)
    try:
        stream = await trio.open_unix_socket(address.path)
    except OSError as exc:
        raise TransportError(f"cannot connect to {url}: {os_reason(exc)}") from exc
    tune_socket(stream.socket, buffer_size)
    return stream
