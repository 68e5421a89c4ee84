"""``host-sim check``: a conformance checker for any fcopy receiver.

:func:`run_checks` (or :func:`check` inside trio) runs the catalogue of scenarios
against the receiver at a URL and returns one :class:`Result` per scenario. See
docs/conformance.md.
"""

from .catalogue import CATALOGUE, select
from .model import PROFILES, FsExpect, Result, Scenario, Step
from .report import junit_xml, summary, write_junit
from .runner import check, run_checks

__all__ = [
    "CATALOGUE",
    "PROFILES",
    "FsExpect",
    "Result",
    "Scenario",
    "Step",
    "check",
    "junit_xml",
    "run_checks",
    "select",
    "summary",
    "write_junit",
]
