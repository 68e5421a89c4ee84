"""The transport error, the helper every family uses to word an OSError, and socket buffers."""

from __future__ import annotations

import errno
import socket

import trio

from ..errors import GsiError


class TransportError(GsiError):
    """A URL that cannot be used, or a socket that could not be opened, bound or connected.

    The message is one sentence that names the URL and says what to do about it.
    """


def os_reason(exc: OSError) -> str:
    """The human part of an OSError ("Connection refused"), without errno noise."""
    return exc.strerror or str(exc) or type(exc).__name__


DEFAULT_SOCKET_BUFFER: int | None = 1024 * 1024
"""SO_SNDBUF/SO_RCVBUF asked for on unix:// streams (None: the OS default); tcp:// keeps
the kernel's autotuning unless a size is given.

A Unix socket's default send buffer (net.core.wmem_default, 208 KiB) cuts a 1 MiB fragment
into several receive/send turns on each side; a bigger one lets a whole fragment (or a
window of them) through per turn (about 2x the throughput for 1 MiB fragments, window 8).
Only applied where net.core.wmem_max / rmem_max allow the full size (see ``tune_socket``);
Linux doubles the value for its bookkeeping. Setting it on a TCP socket turns off the
kernel's autotuning of that buffer.
"""

_IGNORED_ERRNOS = frozenset({errno.EPERM, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP})


def _kernel_cap(name: str) -> int | None:
    """net.core.<name> (the most SO_SNDBUF/SO_RCVBUF may ask for), or None if unknown."""
    try:
        with open(f"/proc/sys/net/core/{name}", encoding="ascii") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def tune_socket(sock: socket.socket | trio.socket.SocketType, size: int | None) -> None:
    """Ask for ``size``-byte send and receive buffers, best effort; None leaves the defaults.

    An option is left alone where the kernel would cap the request (``size`` above
    net.core.wmem_max / rmem_max, 208 KiB on a stock Linux): a capped value gains nothing on
    a Unix socket and would stop TCP's autotuning. One the OS refuses (EPERM, EINVAL,
    ENOPROTOOPT, EOPNOTSUPP) is left as it is too.
    """
    if size is None:
        return
    for option, cap in ((socket.SO_SNDBUF, "wmem_max"), (socket.SO_RCVBUF, "rmem_max")):
        limit = _kernel_cap(cap)
        if limit is not None and limit < size:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:
            if exc.errno not in _IGNORED_ERRNOS:
                raise


def raw_socket(stream: trio.abc.Stream) -> socket.socket | None:
    """The non-blocking stdlib socket under a trio SocketStream, else None (other streams
    are read and written through the trio stream API)."""
    if type(stream) is not trio.SocketStream:
        return None
    sock = getattr(stream.socket, "_sock", None)
    return sock if isinstance(sock, socket.socket) else None
