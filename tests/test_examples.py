"""The examples run as their users would run them: pytest in a subprocess, in the example's
own directory and with its own configuration, the gsi plugin loaded from the entry point."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CI_INTEGRATION = EXAMPLES / "ci_integration"
CI_INTEGRATION_TESTS = 5


def _pytest(directory: Path, *options: str) -> subprocess.CompletedProcess[str]:
    # The user's environment, minus what would change which plugins load.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", "PYTEST_PLUGINS")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options,
         str(directory)],
        cwd=directory, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("options", [
    pytest.param((), id="as-shipped"),
    pytest.param(("-o", "trio_mode=true"), id="trio-mode"),
])
def test_ci_integration_example_passes(options: tuple[str, ...]) -> None:
    run = _pytest(CI_INTEGRATION, *options)
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    summary = report.strip().splitlines()[-1]
    assert re.fullmatch(rf"{CI_INTEGRATION_TESTS} passed in [0-9.]+s", summary), report


def test_ci_integration_example_uses_its_own_configuration() -> None:
    run = _pytest(CI_INTEGRATION, "--co", "-v")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"rootdir: {CI_INTEGRATION}" in run.stdout
    assert "configfile: pyproject.toml" in run.stdout
    assert re.search(r"^plugins: .*\bgsi-", run.stdout, re.M)  # from the entry point
    assert len(re.findall(r"<Function ", run.stdout)) == CI_INTEGRATION_TESTS
