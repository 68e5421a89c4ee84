"""The whole catalogue, in report order, and ``--only`` selection."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from .model import Scenario
from .scenarios_copy import SEQUENCES
from .scenarios_framing import FAULTS, FRAMING
from .scenarios_names import CREATE_PATH, NAMES, OVERWRITE, SYMLINKS
from .scenarios_negotiate import SCENARIOS as NEGOTIATION

CATALOGUE: tuple[Scenario, ...] = (
    *NEGOTIATION, *SEQUENCES, *NAMES, *OVERWRITE, *CREATE_PATH, *SYMLINKS, *FRAMING, *FAULTS)

_ids = [sc.id for sc in CATALOGUE]
if len(set(_ids)) != len(_ids):  # pragma: no cover - a catalogue edit gone wrong
    raise RuntimeError("duplicate scenario ids in the conformance catalogue")


def matches_pattern(scenario_id: str, pattern: str) -> bool:
    """``negotiate.*`` (shell-style), an exact id, or a topic (``negotiate``)."""
    return (fnmatchcase(scenario_id, pattern) or scenario_id == pattern
            or scenario_id.startswith(pattern + "."))


def select(scenarios: Sequence[Scenario], only: Sequence[str]) -> list[Scenario]:
    """The scenarios matching any pattern of ``only`` (all of them if it is empty)."""
    if not only:
        return list(scenarios)
    return [sc for sc in scenarios if any(matches_pattern(sc.id, p) for p in only)]
