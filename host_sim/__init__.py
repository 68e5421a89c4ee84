"""host_sim: a host simulator for the Hyper-V guest file-copy protocol.

:class:`HostConnection` is the sans-IO host side; :class:`HostClient`,
:func:`open_host` and :func:`copy_vm_file` drive it over any gsi transport.
:class:`FaultyHost` and :func:`faulty_copy` apply a :class:`FaultPlan` to copies
(``docs/faults.md``). :func:`copy_tree` copies directory trees; :func:`replay` plays a
session trace's host side against a receiver (``docs/traces.md``).
"""

from .client import CopyResult, HostClient, copy_vm_file, explain_status, open_host
from .fault_plan import FaultPlan, FaultReport, parse_fault
from .faults import FaultyHost, faulty_copy
from .protocol import MAX_WINDOW, Answer, HostConnection
from .replay import ReplayReport, replay
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
]
