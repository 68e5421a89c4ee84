"""Fault plans for the host simulator: the faults, their SPEC syntax and the report.

A SPEC is ``KIND[:KEY=VALUE[,KEY=VALUE...]]``; :func:`parse_fault` turns one into a
:class:`Fault` and ``fault.spec()`` turns it back. Most faults act at a :class:`Point` of a
copy: ``negotiate``, ``start``, ``write:N`` (the N-th WRITE as sent, from 0; a bare ``N``
means the same) or ``complete``. ``docs/faults.md`` lists every kind with what the
receiver is expected to do; :mod:`host_sim.faults` applies a plan to copies and
:mod:`host_sim.fault_report` says what happened (its names are importable from here too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from gsi import codec
from gsi.constants import ICMSG_HDR_END
from gsi.errors import GsiError

from .fault_report import OUTCOMES, AnswerRecord, FaultReport, IdleRecord

__all__ = [
    "FIELDS",
    "OUTCOMES",
    "Abandon",
    "AnswerRecord",
    "Cancel",
    "CompleteEarly",
    "Corrupt",
    "Disconnect",
    "Duplicate",
    "Fault",
    "FaultPlan",
    "FaultReport",
    "FaultSpecError",
    "FieldSpec",
    "Garbage",
    "Idle",
    "IdleRecord",
    "KeepGoing",
    "NoRead",
    "Overlap",
    "Point",
    "Reorder",
    "Stall",
    "Truncate",
    "parse_fault",
    "resolve_value",
]


class FaultSpecError(GsiError, ValueError):
    """A SPEC that does not describe a fault."""


# -- points --------------------------------------------------------------------------

_POINT_KINDS = ("negotiate", "start", "write", "complete")


@dataclass(frozen=True, slots=True)
class Point:
    """A step of a copy: ``negotiate``, ``start``, ``write:N`` or ``complete``."""

    kind: str
    index: int = 0

    def __post_init__(self) -> None:
        if self.kind not in _POINT_KINDS:
            raise FaultSpecError(f"unknown point {self.kind!r}; expected one of {_POINT_KINDS}")
        if self.index < 0 or (self.index and self.kind != "write"):
            raise FaultSpecError(f"bad index {self.index} for point {self.kind!r}")

    @classmethod
    def parse(cls, text: str) -> Point:
        text = text.strip().lower()
        if text.isdigit():
            return cls("write", int(text))
        kind, sep, index = text.partition(":")
        if kind == "write" and sep and index.isdigit():
            return cls("write", int(index))
        if kind in _POINT_KINDS and kind != "write" and not sep:
            return cls(kind)
        raise FaultSpecError(f"bad point {text!r}: use negotiate, start, write:N, N or complete")

    def __str__(self) -> str:
        return f"write:{self.index}" if self.kind == "write" else self.kind



# -- corruptible fields ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """Where a corruptible field sits in a payload and which messages have it."""

    offset: int
    width: int
    kinds: tuple[str, ...]


_FCOPY = ("start", "write", "complete")
FIELDS: dict[str, FieldSpec] = {
    "pipe-flags": FieldSpec(0, 4, _POINT_KINDS),
    "msgsize": FieldSpec(4, 4, _POINT_KINDS),
    "icmsgtype": FieldSpec(12, 2, _POINT_KINDS),
    "icmsgsize": FieldSpec(18, 2, _POINT_KINDS),
    "transaction-id": FieldSpec(24, 1, _POINT_KINDS),
    "icflags": FieldSpec(25, 1, _POINT_KINDS),
    "frame-count": FieldSpec(ICMSG_HDR_END, 2, ("negotiate",)),
    "msg-count": FieldSpec(ICMSG_HDR_END + 2, 2, ("negotiate",)),
    "operation": FieldSpec(ICMSG_HDR_END, 4, _FCOPY),
    "offset": FieldSpec(codec.WRITE_FIELDS_OFFSET, 8, ("write",)),
    "size": FieldSpec(codec.WRITE_FIELDS_OFFSET + 8, 4, ("write",)),
    "copy-flags": FieldSpec(ICMSG_HDR_END + 1076, 4, ("start",)),
    "file-size": FieldSpec(ICMSG_HDR_END + 1080, 8, ("start",)),
}
"""Fields ``corrupt`` can change: payload offset, width in bytes, messages holding it."""


def _check_value(text: str) -> str:
    """``max``, an integer (``0x`` allowed), or ``+N`` / ``-N`` relative to the original."""
    text = text.strip().lower()
    if text != "max":
        try:
            int(text.lstrip("+-") or "x", 0)
        except ValueError:
            raise FaultSpecError(f"bad value {text!r}: use max, an integer, +N or -N") from None
    return text


def resolve_value(text: str, original: int, width: int) -> int:
    """The new field value, wrapped to ``width`` bytes."""
    mask = (1 << (8 * width)) - 1
    if text == "max":
        return mask
    number = int(text.lstrip("+-"), 0)
    if text.startswith("+"):
        return (original + number) & mask
    if text.startswith("-"):
        return (original - number) & mask
    return number & mask


# -- faults ----------------------------------------------------------------------------


def _int(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise FaultSpecError(f"{text!r} is not an integer") from None
    if value < 0:
        raise FaultSpecError(f"{value} is negative")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise FaultSpecError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value < math.inf:
        raise FaultSpecError(f"{text!r} is not a number of seconds")
    return value


def _field(text: str) -> str:
    if text not in FIELDS:
        raise FaultSpecError(f"unknown field {text!r}; expected one of {sorted(FIELDS)}")
    return text


_CONVERT: dict[str, Callable[[str], Any]] = {
    "at": Point.parse, "after_bytes": _int, "after_messages": _int, "seconds": _seconds,
    "nbytes": _int, "seed": _int, "keep": _int, "connections": _int, "copy": _int,
    "field": _field, "value": _check_value,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Base of every fault. ``copy``: apply to that copy of the channel only (from 0)."""

    copy: int | None = None
    kind: ClassVar[str] = ""
    keys: ClassVar[dict[str, str]] = {}
    """SPEC key -> attribute."""

    def spec(self) -> str:
        """The canonical SPEC (``parse_fault(f.spec()) == f``)."""
        parts = []
        for key, attr in {**self.keys, "copy": "copy"}.items():
            value = getattr(self, attr)
            if value is not None:
                parts.append(f"{key}={value}")
        return self.kind + (":" + ",".join(parts) if parts else "")

    def __str__(self) -> str:
        return self.spec()


def _need_write(fault: Fault, at: Point) -> None:
    if at.kind != "write":
        raise FaultSpecError(f"{fault.kind} needs at=write:N, not at={at}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Disconnect(Fault):
    """Close the connection abruptly: before ``at``, after ``after_bytes`` bytes (mid-frame
    as it falls) or after ``after_messages`` whole messages of this copy."""

    at: Point | None = None
    after_bytes: int | None = None
    after_messages: int | None = None
    kind: ClassVar[str] = "disconnect"
    keys: ClassVar[dict[str, str]] = {"at": "at", "bytes": "after_bytes",
                                      "messages": "after_messages"}

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.at, self.after_bytes, self.after_messages)) != 1:
            raise FaultSpecError("disconnect takes exactly one of at=, bytes=, messages=")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(Fault):
    """Send CANCEL instead of the message at ``at`` (``at=N``: after N WRITEs)."""

    at: Point
    kind: ClassVar[str] = "cancel"
    keys: ClassVar[dict[str, str]] = {"at": "at"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Stall(Fault):
    """Send nothing for ``seconds`` before the message at ``at``, then go on."""

    at: Point
    seconds: float
    kind: ClassVar[str] = "stall"
    keys: ClassVar[dict[str, str]] = {"at": "at", "seconds": "seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class CompleteEarly(Fault):
    """Send COMPLETE instead of the message at ``at``: bytes are missing."""

    at: Point
    kind: ClassVar[str] = "complete-early"
    keys: ClassVar[dict[str, str]] = {"at": "at"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Abandon(Fault):
    """Stop the copy before ``at`` without CANCEL, keeping the channel for the next copy."""

    at: Point
    kind: ClassVar[str] = "abandon"
    keys: ClassVar[dict[str, str]] = {"at": "at"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Duplicate(Fault):
    """Send WRITE ``at`` twice in a row."""

    at: Point
    kind: ClassVar[str] = "duplicate"
    keys: ClassVar[dict[str, str]] = {"at": "at"}

    def __post_init__(self) -> None:
        _need_write(self, self.at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Reorder(Fault):
    """Swap WRITE ``at`` and the WRITE after it."""

    at: Point
    kind: ClassVar[str] = "reorder"
    keys: ClassVar[dict[str, str]] = {"at": "at"}

    def __post_init__(self) -> None:
        _need_write(self, self.at)


@dataclass(frozen=True, slots=True, kw_only=True)
class Overlap(Fault):
    """After WRITE ``at``, an extra WRITE of up to one fragment of the right data starting
    ``nbytes`` before the end of WRITE ``at`` (it overlaps it and what follows)."""

    at: Point
    nbytes: int = 1
    kind: ClassVar[str] = "overlap"
    keys: ClassVar[dict[str, str]] = {"at": "at", "bytes": "nbytes"}

    def __post_init__(self) -> None:
        _need_write(self, self.at)
        if self.nbytes < 1:
            raise FaultSpecError("overlap needs bytes >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Corrupt(Fault):
    """Set ``field`` of the message at ``at`` to ``value`` (``max``, N, ``+N``, ``-N``)."""

    at: Point
    field: str
    value: str
    kind: ClassVar[str] = "corrupt"
    keys: ClassVar[dict[str, str]] = {"at": "at", "field": "field", "value": "value"}

    def __post_init__(self) -> None:
        _field(self.field)
        object.__setattr__(self, "value", _check_value(self.value))
        if self.at.kind not in FIELDS[self.field].kinds:
            raise FaultSpecError(f"a {self.at.kind} message has no field {self.field!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Garbage(Fault):
    """Send ``nbytes`` random bytes (from ``seed``) instead of the message at ``at``, then
    end the stream and wait for the guest to close."""

    at: Point = Point("start")
    nbytes: int = 4096
    seed: int = 0
    kind: ClassVar[str] = "garbage"
    keys: ClassVar[dict[str, str]] = {"at": "at", "bytes": "nbytes", "seed": "seed"}

    def __post_init__(self) -> None:
        if self.nbytes < 1:
            raise FaultSpecError("garbage needs bytes >= 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class Truncate(Fault):
    """Send only the first ``keep`` bytes (default: half) of the message at ``at``, then end
    the stream and wait for the guest to close."""

    at: Point
    keep: int | None = None
    kind: ClassVar[str] = "truncate"
    keys: ClassVar[dict[str, str]] = {"at": "at", "keep": "keep"}


@dataclass(frozen=True, slots=True, kw_only=True)
class NoRead(Fault):
    """From ``at`` on, send everything without reading answers (ignoring the window); when
    all is sent, wait ``seconds`` more before reading again."""

    at: Point
    seconds: float = 0.0
    kind: ClassVar[str] = "noread"
    keys: ClassVar[dict[str, str]] = {"at": "at", "seconds": "seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Idle(Fault):
    """Open ``connections`` more connections that send nothing, during the copy, each held
    until the guest closes it or ``seconds`` pass."""

    connections: int = 1
    seconds: float = 10.0
    kind: ClassVar[str] = "idle"
    keys: ClassVar[dict[str, str]] = {"connections": "connections", "seconds": "seconds"}


@dataclass(frozen=True, slots=True, kw_only=True)
class KeepGoing(Fault):
    """Ignore failure answers: send every message of the copy anyway."""

    kind: ClassVar[str] = "keep-going"


_KINDS: dict[str, type[Fault]] = {
    cls.kind: cls for cls in (Disconnect, Cancel, Stall, CompleteEarly, Abandon, Duplicate,
                              Reorder, Overlap, Corrupt, Garbage, Truncate, NoRead, Idle,
                              KeepGoing)
}
BEFORE_KINDS = (Stall, NoRead, Cancel, CompleteEarly, Abandon, Garbage, Disconnect)
"""Faults that act before the message at their point, in plan order."""
STRUCTURAL_KINDS = (Reorder, Duplicate, Overlap)
"""Faults that reshape the list of WRITEs before anything is sent."""


def parse_fault(spec: str) -> Fault:
    """Parse one SPEC, ``KIND[:KEY=VALUE[,KEY=VALUE...]]``.

    Raises:
        FaultSpecError: unknown kind or key, bad value, missing key.
    """
    kind, _, rest = spec.strip().partition(":")
    cls = _KINDS.get(kind.strip().lower())
    if cls is None:
        raise FaultSpecError(f"unknown fault {kind!r}; expected one of {sorted(_KINDS)}")
    keys = {**cls.keys, "copy": "copy"}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq or key not in keys:
            raise FaultSpecError(f"{cls.kind}: bad item {item!r}; keys: {sorted(keys)}")
        attr = keys[key]
        kwargs[attr] = _CONVERT[attr](value.strip())
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise FaultSpecError(f"{cls.kind}: {exc}") from None


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """An ordered tuple of faults, applied to a copy."""

    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, specs: Iterable[str]) -> FaultPlan:
        return cls(tuple(parse_fault(spec) for spec in specs))

    def for_copy(self, index: int) -> list[Fault]:
        return [f for f in self.faults if f.copy is None or f.copy == index]

    def __iter__(self) -> Iterator[Fault]:
        return iter(self.faults)

    def __len__(self) -> int:
        return len(self.faults)

    def __str__(self) -> str:
        return " ".join(f.spec() for f in self.faults) or "(no faults)"
