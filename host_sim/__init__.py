"""host_sim: a host simulator for the Hyper-V guest file-copy protocol.

:class:`HostConnection` is the sans-IO host side; :class:`HostClient`,
:func:`open_host` and :func:`copy_vm_file` drive it over any gsi transport.
:class:`FaultyHost` and :func:`faulty_copy` apply a :class:`FaultPlan` to copies
(``docs/faults.md``). :func:`run_checks` runs the conformance catalogue against any
receiver (``docs/conformance.md``). :func:`copy_tree` copies directory trees; :func:`replay`
plays a session trace's host side against a receiver (``docs/traces.md``).

The names below are imported on first use (PEP 562, :mod:`gsi._lazy`):
``host_sim.protocol`` loads without trio, and ``import host_sim`` works on Windows.
"""

from typing import TYPE_CHECKING

from gsi._lazy import lazy_exports
from gsi._version import __version__ as __version__

if TYPE_CHECKING:
    from .client import CopyResult, HostClient, copy_vm_file, explain_status, open_host
    from .conformance import Result, run_checks
    from .fault_plan import FaultPlan, FaultReport, parse_fault
    from .faults import FaultyHost, faulty_copy
    from .protocol import MAX_WINDOW, Answer, HostConnection
    from .replayer import ReplayReport, replay
    from .tree import TreeError, TreePlan, TreeResult, copy_tree, plan_tree

__all__ = [
    "MAX_WINDOW",
    "Answer",
    "CopyResult",
    "FaultPlan",
    "FaultReport",
    "FaultyHost",
    "HostClient",
    "HostConnection",
    "ReplayReport",
    "Result",
    "TreeError",
    "TreePlan",
    "TreeResult",
    "copy_tree",
    "copy_vm_file",
    "explain_status",
    "faulty_copy",
    "open_host",
    "parse_fault",
    "plan_tree",
    "replay",
    "run_checks",
]

_EXPORTS = {
    **dict.fromkeys(["CopyResult", "HostClient", "copy_vm_file", "explain_status",
                     "open_host"], ".client"),
    **dict.fromkeys(["Result", "run_checks"], ".conformance"),
    **dict.fromkeys(["ReplayReport", "replay"], ".replayer"),
    **dict.fromkeys(["TreeError", "TreePlan", "TreeResult", "copy_tree", "plan_tree"], ".tree"),
    **dict.fromkeys(["FaultPlan", "FaultReport", "parse_fault"], ".fault_plan"),
    **dict.fromkeys(["FaultyHost", "faulty_copy"], ".faults"),
    **dict.fromkeys(["MAX_WINDOW", "Answer", "HostConnection"], ".protocol"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
