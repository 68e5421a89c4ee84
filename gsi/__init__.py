"""gsi: guest-side receiver for the Hyper-V guest file-copy protocol (Copy-VMFile).

The sans-IO core (:mod:`gsi.protocol`, :mod:`gsi.codec`, :mod:`gsi.events`) never
touches a socket or a file; :mod:`gsi.sink` is the only code that writes files;
:mod:`gsi.server` and :mod:`gsi.session` are the trio shell around them.
"""

from .constants import CopyFlags, IcMsgType, Operation, Status, describe_status
from .errors import (
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
__version__ = "0.1.0"
