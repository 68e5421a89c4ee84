"""host_sim: a host simulator for the Hyper-V guest file-copy protocol.

:class:`HostConnection` is the sans-IO host side; :class:`HostClient`,
:func:`open_host` and :func:`copy_vm_file` drive it over any gsi transport.
:class:`FaultyHost` and :func:`faulty_copy` apply a :class:`FaultPlan` to copies
(``docs/faults.md``). :func:`run_checks` runs the conformance catalogue against any
receiver (``docs/conformance.md``).
"""

from .client import CopyResult, HostClient, copy_vm_file, explain_status, open_host
from .conformance import Result, run_checks
from .fault_plan import FaultPlan, FaultReport, parse_fault
from .faults import FaultyHost, faulty_copy
from .protocol import MAX_WINDOW, Answer, HostConnection

__all__ = [
    "MAX_WINDOW",
    "Answer",
    "CopyResult",
    "FaultPlan",
    "FaultReport",
    "FaultyHost",
    "HostClient",
    "HostConnection",
    "Result",
    "copy_vm_file",
    "explain_status",
    "faulty_copy",
    "open_host",
    "parse_fault",
    "run_checks",
]
