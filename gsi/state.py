"""The guest's connection states and the one table that moves between them (h11 style).

:func:`next_state` is the only way :class:`gsi.protocol.GuestConnection` changes state:
a trigger (an answer given, or something the core saw itself) in a state, with the
outcome's status, gives the next state. The theory of operation is in
:mod:`gsi.protocol`.
"""

from __future__ import annotations

import enum
from typing import Final

from .errors import LocalProtocolError

__all__ = ["GuestState", "Trigger", "next_state"]


class GuestState(enum.Enum):
    NEGOTIATING = "negotiating"
    IDLE = "idle"
    COPYING = "copying"
    CLOSED = "closed"
    ERROR = "error"


class Trigger(enum.Enum):
    """What can move the state: an answer given, or something the core saw itself."""

    NEGOTIATE_ANSWERED = "negotiate answered"
    START_ANSWERED = "start answered"
    WRITE_ANSWERED = "write answered"
    COMPLETE_ANSWERED = "complete answered"
    CANCEL_ANSWERED = "cancel answered"
    COPY_ABORTED = "copy aborted"
    """The core drops the open copy on its own (a CopyAborted notice)."""
    RESUMED = "resumed"
    """An earlier connection's NEGOTIATE is taken over (``GuestConnection.resume``)."""
    END_OF_STREAM = "end of stream"
    FRAMING_ERROR = "framing error"


_N, _I, _C = GuestState.NEGOTIATING, GuestState.IDLE, GuestState.COPYING
_OPEN = (_N, _I, _C)

# (state, trigger) -> (new state if the outcome is 0, new state otherwise). A pair that is
# missing cannot happen (a bug in the caller): the core never makes such an event.
_TRANSITIONS: Final[dict[tuple[GuestState, Trigger], tuple[GuestState, GuestState]]] = {
    (_N, Trigger.NEGOTIATE_ANSWERED): (_I, _N),
    (_N, Trigger.RESUMED): (_I, _N),
    (_I, Trigger.NEGOTIATE_ANSWERED): (_I, _I),  # a second NEGOTIATE changes nothing
    (_C, Trigger.NEGOTIATE_ANSWERED): (_C, _C),
    (_I, Trigger.START_ANSWERED): (_C, _I),  # a START with a copy open aborted it first
    (_C, Trigger.WRITE_ANSWERED): (_C, _I),  # any non-zero answer ends the copy
    (_C, Trigger.COMPLETE_ANSWERED): (_I, _I),
    (_I, Trigger.CANCEL_ANSWERED): (_I, _I),
    (_C, Trigger.CANCEL_ANSWERED): (_I, _I),
    (_C, Trigger.COPY_ABORTED): (_I, _I),
    **{(state, Trigger.END_OF_STREAM): (GuestState.CLOSED,) * 2 for state in _OPEN},
    **{(state, Trigger.FRAMING_ERROR): (GuestState.ERROR,) * 2
       for state in (*_OPEN, GuestState.ERROR)},
}


def next_state(state: GuestState, trigger: Trigger, status: int = 0) -> GuestState:
    """The state after ``trigger`` in ``state`` with outcome ``status`` (0 = success).

    Raises:
        LocalProtocolError: the trigger cannot happen in that state.
    """
    try:
        ok, failed = _TRANSITIONS[state, trigger]
    except KeyError:
        raise LocalProtocolError(f"{trigger.value} cannot happen in state {state.value}"
                                 ) from None
    return ok if status == 0 else failed
