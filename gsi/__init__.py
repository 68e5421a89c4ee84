"""gsi: guest-side receiver for the Hyper-V guest file-copy protocol (Copy-VMFile).

The sans-IO core (:mod:`gsi.protocol`, :mod:`gsi.codec`, :mod:`gsi.events`) never
touches a socket or a file; :mod:`gsi.sink` is the only code that writes files;
:mod:`gsi.server` and :mod:`gsi.session` are the trio shell around them.

The names below are imported on first use (PEP 562, :mod:`gsi._lazy`): ``import gsi``
alone loads neither trio nor construct.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .constants import CopyFlags, IcMsgType, Operation, Status, describe_status
    from .errors import (
        AcceptError,
        CopyFailed,
        FramingError,
        GsiError,
        InvalidNameError,
        LocalProtocolError,
        ProtocolError,
        RemoteProtocolError,
        SinkError,
    )
    from .events import (
        NEED_DATA,
        CancelCopy,
        CompleteCopy,
        ConnectionClosed,
        CopyAborted,
        Event,
        Negotiate,
        Rejected,
        StartCopy,
        WriteBatch,
        WriteData,
    )
    from .framing import Framer
    from .protocol import GuestConnection, GuestState
    from .server import Receiver, ReceiverConfig, ReceiverStats
    from .sink import FileSink, OpenCopy

__all__ = [
    "NEED_DATA",
    "AcceptError",
    "CancelCopy",
    "CompleteCopy",
    "ConnectionClosed",
    "CopyAborted",
    "CopyFailed",
    "CopyFlags",
    "Event",
    "FileSink",
    "Framer",
    "FramingError",
    "GsiError",
    "GuestConnection",
    "GuestState",
    "IcMsgType",
    "InvalidNameError",
    "LocalProtocolError",
    "Negotiate",
    "OpenCopy",
    "Operation",
    "ProtocolError",
    "Receiver",
    "ReceiverConfig",
    "ReceiverStats",
    "Rejected",
    "RemoteProtocolError",
    "SinkError",
    "StartCopy",
    "Status",
    "WriteBatch",
    "WriteData",
    "describe_status",
]
from ._version import __version__ as __version__

_EXPORTS = {
    **dict.fromkeys(["CopyFlags", "IcMsgType", "Operation", "Status", "describe_status"],
                    ".constants"),
    **dict.fromkeys(["AcceptError", "CopyFailed", "FramingError", "GsiError", "InvalidNameError",
                     "LocalProtocolError", "ProtocolError", "RemoteProtocolError",
                     "SinkError"], ".errors"),
    **dict.fromkeys(["NEED_DATA", "CancelCopy", "CompleteCopy", "ConnectionClosed",
                     "CopyAborted", "Event", "Negotiate", "Rejected", "StartCopy",
                     "WriteBatch", "WriteData"], ".events"),
    "Framer": ".framing",
    "GuestConnection": ".protocol",
    "GuestState": ".protocol",
    **dict.fromkeys(["Receiver", "ReceiverConfig", "ReceiverStats"], ".server"),
    **dict.fromkeys(["FileSink", "OpenCopy"], ".sink"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
