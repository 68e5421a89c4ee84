"""The real vmbus channel (PROTOCOL.md section 7).

- :mod:`gsi.vmbus.ring`: sans-IO ring-buffer access (packets, indices, signalling rules).
- :mod:`gsi.vmbus.channel`: one channel end: rings, doorbell, signalling and flow control.
- :mod:`gsi.vmbus.stream`: a channel end as a trio stream, the channel as a listener.
- :mod:`gsi.vmbus.uio`: the real channel under ``uio_hv_generic`` (``vmbus://``).
- :mod:`gsi.vmbus.emu`: an emulated channel in a shared file (``vmbus-emu://``).
"""

from .channel import Doorbell, RingChannel, full_barrier
from .emu import (
    DEFAULT_RING_SIZE,
    FifoDoorbell,
    attach_host_channel,
    connect_emulated_host,
    create_guest_channel,
    open_emulated_listener,
)
from .ring import (
    DESCRIPTOR_SIZE,
    FEAT_PENDING_SEND_SZ,
    MAX_PACKET_SIZE,
    RING_CONTROL_SIZE,
    TRAILER_SIZE,
    VM_PKT_COMP,
    VM_PKT_DATA_INBAND,
    VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED,
    VMBUS_RQST_ERROR,
    ChannelRings,
    Packet,
    RingError,
    RingFull,
    RingView,
    WritableBuffer,
    need_signal_after_read,
    need_signal_after_write,
    packet_ring_bytes,
)
from .stream import ChannelListener, RingStream
from .uio import (
    UioChannelInfo,
    UioDoorbell,
    find_uio_channel,
    open_uio_channel,
    open_uio_listener,
)

__all__ = [
    "DEFAULT_RING_SIZE",
    "DESCRIPTOR_SIZE",
    "FEAT_PENDING_SEND_SZ",
    "MAX_PACKET_SIZE",
    "RING_CONTROL_SIZE",
    "TRAILER_SIZE",
    "VMBUS_DATA_PACKET_FLAG_COMPLETION_REQUESTED",
    "VMBUS_RQST_ERROR",
    "VM_PKT_COMP",
    "VM_PKT_DATA_INBAND",
    "ChannelListener",
    "ChannelRings",
    "Doorbell",
    "FifoDoorbell",
    "Packet",
    "RingChannel",
    "RingError",
    "RingFull",
    "RingStream",
    "RingView",
    "UioChannelInfo",
    "UioDoorbell",
    "WritableBuffer",
    "attach_host_channel",
    "connect_emulated_host",
    "create_guest_channel",
    "find_uio_channel",
    "full_barrier",
    "need_signal_after_read",
    "need_signal_after_write",
    "open_emulated_listener",
    "open_uio_channel",
    "open_uio_listener",
    "packet_ring_bytes",
]
