"""Tests of uploader.py against a real receiver, with the fixtures of gsi's pytest plugin.

- ``gsi_guest``: a receiver inside the test's trio run (async tests, pytest-trio).
- ``gsi_guest_process``: ``gsi-receiver`` in a subprocess (any test; here, sync ones).

Both give ``.url`` (hand it to the code under test) and ``.path("/guest/path")`` (where a
guest path landed on this machine). No conftest.py is needed: installing gsi registers the
plugin.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from uploader import push_artifacts, push_artifacts_sync

from gsi import CopyFailed, Status
from gsi.testing import Guest, GuestProcess


@pytest.fixture
def artifacts(tmp_path: Path) -> list[Path]:
    build = tmp_path / "build"
    build.mkdir()
    app = build / "app.tar.gz"
    app.write_bytes(bytes(range(256)) * 100)  # 25600 bytes: several 6144-byte fragments
    notes = build / "RELEASE-NOTES.txt"
    notes.write_text("build 42\n")
    return [app, notes]


# -- async tests: pytest-trio (this project marks them; trio_mode = true works too) -------


@pytest.mark.trio
async def test_push_artifacts(gsi_guest: Guest, artifacts: list[Path]) -> None:
    results = await push_artifacts(gsi_guest.url, artifacts, "/opt/builds/42/")
    assert [r.size for r in results] == [a.stat().st_size for a in artifacts]
    for artifact in artifacts:
        landed = gsi_guest.path(f"/opt/builds/42/{artifact.name}")
        assert landed.read_bytes() == artifact.read_bytes()


@pytest.mark.trio
async def test_push_without_replace_keeps_what_is_there(gsi_guest: Guest,
                                                        artifacts: list[Path]) -> None:
    await push_artifacts(gsi_guest.url, artifacts[1:], "/opt/builds/42/", replace=False)
    artifacts[1].write_text("build 43\n")
    with pytest.raises(CopyFailed) as refused:
        await push_artifacts(gsi_guest.url, artifacts[1:], "/opt/builds/42/", replace=False)
    assert refused.value.status == Status.ALREADY_EXISTS
    assert gsi_guest.path("/opt/builds/42/RELEASE-NOTES.txt").read_text() == "build 42\n"


@pytest.mark.trio
@pytest.mark.gsi_config(max_file_size=10_000)  # receiver options for this test's guest
async def test_a_guest_that_refuses_big_files(gsi_guest: Guest,
                                              artifacts: list[Path]) -> None:
    with pytest.raises(CopyFailed) as refused:
        await push_artifacts(gsi_guest.url, artifacts, "/opt/builds/42/")
    assert refused.value.status == Status.INVALIDARG
    assert not gsi_guest.path("/opt/builds/42/app.tar.gz").exists()


# -- sync tests: the receiver runs as a subprocess -----------------------------------------


def test_push_artifacts_sync(gsi_guest_process: GuestProcess, artifacts: list[Path]) -> None:
    push_artifacts_sync(gsi_guest_process.url, artifacts, "/srv/drop/")
    for artifact in artifacts:
        landed = gsi_guest_process.path(f"/srv/drop/{artifact.name}")
        assert landed.read_bytes() == artifact.read_bytes()
    assert "copy committed: /srv/drop/app.tar.gz" in gsi_guest_process.log()


def test_seed_the_guest_then_check_it(gsi_guest_process: GuestProcess,
                                      artifacts: list[Path]) -> None:
    # .copy() is one Copy-VMFile; failures raise CopyFailed with the guest's status.
    gsi_guest_process.copy(artifacts[1], "/srv/drop/", create_full_path=True)
    with pytest.raises(CopyFailed, match="0x80070050") as refused:
        push_artifacts_sync(gsi_guest_process.url, artifacts[1:], "/srv/drop/", replace=False)
    assert refused.value.status == Status.ALREADY_EXISTS
