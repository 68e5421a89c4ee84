"""What happened to a faulty copy: :class:`FaultReport`, with one :class:`AnswerRecord`
per answer and one :class:`IdleRecord` per idle connection (see :mod:`host_sim.faults`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # fault_plan imports this module
    from .fault_plan import Point

__all__ = ["OUTCOMES", "AnswerRecord", "FaultReport", "IdleRecord"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerRecord:
    """One answer: the step it answers (kind ``cancel`` for a CANCEL, ``raw`` for bytes
    that were not a planned message), its status, and what it echoed."""

    point: Point | None
    kind: str
    status: int
    transaction_id: int
    echoed_operation: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class IdleRecord:
    closed_by_guest: bool
    seconds: float


OUTCOMES = ("committed", "refused", "cancelled", "abandoned", "host-closed", "guest-closed",
            "timeout", "incomplete")
"""How a faulty copy ended. ``incomplete``: everything was sent and answered, nothing
committed (e.g. ``keep-going`` after a refusal)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultReport:
    """What happened to one faulty copy."""

    target: str
    size: int
    outcome: str
    committed: bool | None
    applied: tuple[str, ...]
    skipped: tuple[str, ...]
    answers: tuple[AnswerRecord, ...]
    lost: int
    """Fully sent requests that were never answered."""
    unexpected: int
    """Answers no outstanding request matched by transaction id."""
    guest_closed: bool
    bytes_sent: int
    messages_sent: int
    seconds: float
    idle: tuple[IdleRecord, ...] = ()

    def status(self, point: Point | str) -> int | None:
        """The status of the first answer to a step (``"start"``, ``"write:3"``...)."""
        from .fault_plan import Point

        point = Point.parse(point) if isinstance(point, str) else point
        return next((a.status for a in self.answers if a.point == point), None)

    def statuses(self, kind: str) -> list[int]:
        """The statuses of every answer to steps of one kind (``"write"``, ``"cancel"``)."""
        return [a.status for a in self.answers if a.kind == kind]

    def __str__(self) -> str:
        committed = {True: "yes", False: "no", None: "unknown"}[self.committed]
        counts: dict[tuple[str, int], int] = {}
        for a in self.answers:
            counts[a.kind, a.status] = counts.get((a.kind, a.status), 0) + 1
        answers = ", ".join(f"{k}x{n} 0x{s:08X}" if n > 1 else f"{k} 0x{s:08X}"
                            for (k, s), n in counts.items())
        text = (f"fault copy -> {self.target}: {self.outcome} (committed: {committed}); "
                f"applied: {' '.join(self.applied) or '-'}")
        if self.skipped:
            text += f"; not reached: {' '.join(self.skipped)}"
        text += f"; answers: {answers or '-'}"
        if self.lost:
            text += f"; {self.lost} request(s) never answered"
        if self.idle:
            closed = sum(r.closed_by_guest for r in self.idle)
            text += f"; idle connections closed by the guest: {closed}/{len(self.idle)}"
        return text
