"""One version everywhere: ``gsi/_version.py``, the installed metadata, both packages,
both CLIs' ``--version`` and the receiver's first log line."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import gsi
import host_sim
from gsi._version import __version__
from gsi.testing import guest_process

TIMEOUT = 60.0


def test_packages_and_metadata_agree() -> None:
    # The installed metadata is read from gsi/_version.py at install time
    # (pyproject.toml: dynamic version); make reinstalls when that file changes.
    assert importlib.metadata.version("gsi") == __version__
    assert gsi.__version__ == __version__
    assert host_sim.__version__ == __version__


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL, check=False)


@pytest.mark.parametrize(("prog", "module"), [("gsi-receiver", "gsi.cli"),
                                              ("host-sim", "host_sim.cli")])
def test_version_option(prog: str, module: str) -> None:
    script = Path(sysconfig.get_path("scripts")) / prog
    for argv in ([sys.executable, "-m", module, "--version"], [str(script), "--version"]):
        done = _run(argv)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"{prog} {__version__}\n", argv
        assert done.stdout.split()[1] == importlib.metadata.version("gsi")


def test_receiver_version_needs_no_other_option() -> None:
    # --root and --listen are required, but --version alone answers.
    done = _run([sys.executable, "-m", "gsi.cli", "--version", "--log-level", "DEBUG"])
    assert (done.returncode, done.stdout) == (0, f"gsi-receiver {__version__}\n")


def test_receiver_first_log_line_names_the_version() -> None:
    with guest_process(startup_timeout=TIMEOUT) as guest:
        first = guest.log().splitlines()[0]
    assert f"gsi-receiver {__version__} (Python " in first, first
