"""The transport error and the one helper every family uses to word an OSError."""

from __future__ import annotations

from ..errors import GsiError


class TransportError(GsiError):
    """A URL that cannot be used, or a socket that could not be opened, bound or connected.

    The message is one sentence that names the URL and says what to do about it.
    """


def os_reason(exc: OSError) -> str:
    """The human part of an OSError ("Connection refused"), without errno noise."""
    return exc.strerror or str(exc) or type(exc).__name__
