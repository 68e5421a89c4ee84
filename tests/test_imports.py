"""What importing costs: the cores load no trio and no construct, the packages export
lazily, and gsi, host_sim, gsi.transports and gsi.vmbus import one another without cycles.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from gsi.constants import CopyFlags, Status
from host_sim.protocol import Answer, HostConnection

ROOT = Path(__file__).resolve().parent.parent
CORES = ("gsi.protocol", "gsi.framing", "gsi.codec", "gsi.events", "host_sim.protocol")

GUEST_CORE = """
import sys

import {cores}
from gsi.events import Negotiate, Rejected
from gsi.protocol import GuestConnection

guest = GuestConnection()
guest.receive_data(sys.stdin.buffer.read())
guest.receive_data(b"")
answers = bytearray()
while not isinstance(event := guest.next_event(), type(gsi.events.NEED_DATA)):
    if type(event).__name__ in ("CopyAborted", "ConnectionClosed"):
        break
    status = None if isinstance(event, (Negotiate, Rejected)) else 0
    guest.answer_into(answers, event, status)
sys.stdout.buffer.write(answers)
loaded = [name for name in ("trio", "construct") if name in sys.modules]
sys.exit(f"loaded {{loaded}}" if loaded else 0)
""".format(cores=", ".join(CORES))


def test_the_cores_import_and_run_without_trio_or_construct() -> None:
    host = HostConnection()
    data = bytes(range(256)) * 100
    requests = b"".join([
        host.negotiate(),
        host.start_copy(file_name="a.bin", path_name="/in", flags=CopyFlags.OVER_WRITE,
                        file_size=len(data)),
        *(host.write(offset, data[offset:offset + 6144])
          for offset in range(0, len(data), 6144)),
        host.complete(),
    ])
    done = subprocess.run([sys.executable, "-c", GUEST_CORE], input=requests,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    host.receive_data(done.stdout)
    host.receive_data(b"")
    answers = []
    while isinstance(answer := host.next_answer(), Answer):
        answers.append(answer)
    writes = -(-len(data) // 6144)
    assert [(a.kind, a.status) for a in answers] == [
        ("negotiate", Status.S_OK), ("START_FILE_COPY", Status.S_OK),
        *[("WRITE_TO_FILE", Status.S_OK)] * writes, ("COMPLETE_FCOPY", Status.S_OK)]
    assert answer is None and host.in_flight == 0


@pytest.mark.parametrize("package", ["gsi", "host_sim"])
def test_lazy_exports_match_the_type_checking_imports(package: str) -> None:
    """``__all__``, the lazy table and the TYPE_CHECKING imports name the same things."""
    module = importlib.import_module(package)
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    checked: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom)
                checked.update(dict.fromkeys((a.name for a in imp.names),
                                             "." * imp.level + (imp.module or "")))
    assert checked == module._EXPORTS
    assert sorted(module.__all__) == sorted(checked)


@pytest.mark.parametrize("package", ["gsi", "host_sim"])
def test_lazy_exports_resolve(package: str) -> None:
    code = textwrap.dedent(f"""
        import sys, {package}
        before = set(sys.modules)
        for name in {package}.__all__:
            value = getattr({package}, name)
            defined = sys.modules[{package}._EXPORTS[name].replace(".", "{package}.", 1)]
            assert value is getattr(defined, name), name
        assert set({package}.__all__) <= set(dir({package}))
        namespace = {{}}
        exec("from {package} import *", namespace)
        assert set({package}.__all__) <= set(namespace)
        try:
            {package}.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("no AttributeError")
        print(len(set(sys.modules) - before))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 0  # the names were imported on use, not with the package


def test_version_is_there_without_importing_anything() -> None:
    code = "import sys, gsi; print(gsi.__version__, 'trio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    version, trio_loaded = done.stdout.split()
    assert version.count(".") == 2
    assert trio_loaded == "False"


# -- import cycles -----------------------------------------------------------------------

def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports run when the module is imported: not in functions, not TYPE_CHECKING."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(c for c in ast.iter_child_nodes(node)
                           if isinstance(c, ast.stmt | ast.excepthandler))


def _modules(base: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in (base / package).rglob("*.py"):
            parts = path.relative_to(base).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(base: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` its top-level imports run (the package
    ``__init__`` modules on the way included: importing ``a.b.c`` runs ``a`` and ``a.b``)."""
    modules = _modules(base, packages)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                origin = package.rsplit(".", node.level - 1)[0] if node.level else ""
                target = ".".join(p for p in (origin, node.module) if p)
                targets = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            for target in targets:
                parts = target.split(".")
                graph[name].update(m for i in range(1, len(parts) + 1)
                                   if (m := ".".join(parts[:i])) in modules and m != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while (member := stack.pop()) != node:
                component.add(member)
            component.add(node)
            if len(component) > 1:
                found.append(component)

    for node in graph:
        if node not in index:
            visit(node)
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def crossing_cycles(graph: dict[str, set[str]], a: str, b: str) -> list[set[str]]:
    """Cycles that hold modules of both package ``a`` and package ``b``."""
    return [c for c in cycles(graph)
            if any(_within(m, a) and not _within(m, b) for m in c)
            and any(_within(m, b) and not _within(m, a) for m in c)]


@pytest.mark.parametrize(("a", "b"), [("gsi", "host_sim"), ("gsi.transports", "gsi.vmbus")])
def test_no_import_cycle_between(a: str, b: str) -> None:
    graph = import_graph(ROOT, ("gsi", "host_sim"))
    assert "gsi.transports.base" in graph["gsi.vmbus.channel"]  # the graph sees imports
    assert crossing_cycles(graph, a, b) == []


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """Top-level imports make a cycle; the same import in a function or under
    TYPE_CHECKING does not."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "__init__.py").write_text("from .x import X\n")
    (tmp_path / "a" / "x.py").write_text("from b.y import Y\nX = Y\n")
    (tmp_path / "b" / "__init__.py").write_text("")
    later = "def later():\n    from a import x\n"
    typing = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.x\n"
    for body, expected in [(later, []), (typing, []), ("import a\n", [{"a", "a.x", "b.y"}]),
                           ("try:\n    from a import X\nexcept ImportError:\n    pass\n",
                            [{"a", "a.x", "b.y"}])]:
        (tmp_path / "b" / "y.py").write_text(body + "Y = 1\n")
        graph = import_graph(tmp_path, ("a", "b"))
        assert crossing_cycles(graph, "a", "b") == expected, body
