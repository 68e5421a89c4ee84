"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A fresh, empty destination root."""
    r = tmp_path / "root"
    r.mkdir()
    return r
