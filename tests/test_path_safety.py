"""Nothing is ever written outside the destination root.

A ``gsi-receiver`` subprocess serves ``BASE/root``; ``BASE/outside`` is a sibling holding
files a successful escape would change. Every test snapshots ``BASE`` (except the root)
before and after: the snapshots must be identical. ``..`` components and symlinks leading
outside are refused with 0x80070005; a symlink as the target is never written through
(0x80070050 without --force; with it the entry itself is replaced).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from e2e_helpers import (
    ReceiverProcess,
    Snapshot,
    run_host_sim,
    running_receiver,
    short_tempdir,
    snapshot,
    temp_files,
)

from gsi.constants import Status
from gsi.errors import CopyFailed
from host_sim import copy_vm_file

PAYLOAD = b"payload that must never land outside the root\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("paths")
    (base / "root").mkdir()
    outside = base / "outside"
    (outside / "deeper").mkdir(parents=True)
    (outside / "victim.txt").write_bytes(b"outside victim\n")
    (outside / "deeper" / "escape.txt").write_bytes(b"outside escape\n")
    return base


@pytest.fixture(scope="module")
def receiver(base: Path) -> Iterator[ReceiverProcess]:
    with short_tempdir() as d, running_receiver(base / "root", [f"unix://{d}/rx.sock"]) as rx:
        yield rx


@pytest.fixture(autouse=True)
def nothing_outside_changes(base: Path) -> Iterator[Snapshot]:
    before = snapshot(base, exclude=base / "root")
    assert before  # the fixture tree is there
    yield before
    assert snapshot(base, exclude=base / "root") == before
    assert temp_files(base) == []


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "escape.txt"
    path.write_bytes(PAYLOAD)
    return path


async def _copy_status(url: str, source: Path, dest: str, *, name: str | None = None,
                       force: bool = True, create: bool = True) -> int:
    """Copy-VMFile; 0 or the status it failed with."""
    with trio.fail_after(10):
        try:
            await copy_vm_file(url, source, dest, name=name, force=force,
                               create_full_path=create)
        except CopyFailed as exc:
            assert exc.status is not None, exc
            return exc.status
    return Status.S_OK


@pytest.mark.parametrize("dest", [
    "../outside/",
    "/../outside/",
    "/a/../../outside/",
    "..",
    "/../../etc/",
    "/../../../../../../../../",
    "sub/../../../outside/deeper/",
    "./.././outside",
])
async def test_dotdot_refused(receiver: ReceiverProcess, source: Path, dest: str) -> None:
    assert await _copy_status(receiver.url, source, dest) == Status.ACCESS_DENIED
    assert not (receiver.root / "a").exists()
    assert not (receiver.root / "sub").exists()


@pytest.mark.parametrize("name", ["..", "."])
async def test_dot_file_names_refused(receiver: ReceiverProcess, source: Path,
                                      name: str) -> None:
    status = await _copy_status(receiver.url, source, "/outside/", name=name)
    assert status == Status.ACCESS_DENIED


async def test_absolute_path_lands_under_the_root(receiver: ReceiverProcess, source: Path,
                                                  base: Path) -> None:
    """The sibling's real absolute path, given as the destination, is taken below the root."""
    dest = f"{base / 'outside'}/"
    assert await _copy_status(receiver.url, source, dest) == Status.S_OK
    landed = receiver.root.joinpath(*(base / "outside").parts[1:]) / "escape.txt"
    assert landed.read_bytes() == PAYLOAD
    assert (base / "outside" / "escape.txt").exists() is False


def _make_links(root: Path, base: Path, case: str) -> Path:
    """root/<case>/ with symlinks of every kind; returns that directory."""
    d = root / case
    d.mkdir()
    (d / "real").mkdir()
    os.symlink(base / "outside", d / "abs-out")
    os.symlink("../../outside", d / "rel-out")
    os.symlink("abs-out", d / "hop-out")  # inside root, to a link that leads out
    os.symlink("/", d / "slash")
    os.symlink(base, d / "base")
    os.symlink("real", d / "in-rel")
    os.symlink(d / "real", d / "in-abs")
    os.symlink("../" + case + "/real/../real", d / "in-updown")
    return d


@pytest.mark.parametrize("link", ["abs-out", "rel-out", "hop-out", "slash", "base"])
@pytest.mark.parametrize("tail", ["", "deeper/", "new/sub/"])
async def test_symlink_component_leading_outside_refused(
        receiver: ReceiverProcess, source: Path, base: Path, link: str, tail: str) -> None:
    case = f"comp-{link}-{len(tail)}"
    _make_links(receiver.root, base, case)
    dest = f"/{case}/{link}/{tail}"
    assert await _copy_status(receiver.url, source, dest) == Status.ACCESS_DENIED
    assert not (base / "outside" / "new").exists()


@pytest.mark.parametrize("link", ["in-rel", "in-abs", "in-updown"])
async def test_symlink_component_inside_the_root_followed(
        receiver: ReceiverProcess, source: Path, base: Path, link: str) -> None:
    case = f"follow-{link}"
    d = _make_links(receiver.root, base, case)
    assert await _copy_status(receiver.url, source, f"/{case}/{link}/") == Status.S_OK
    assert (d / "real" / "escape.txt").read_bytes() == PAYLOAD
    assert (d / link).is_symlink()


def test_symlink_escape_through_the_cli(receiver: ReceiverProcess, source: Path,
                                        base: Path) -> None:
    _make_links(receiver.root, base, "cli")
    mark = receiver.mark()
    result = run_host_sim(receiver.url, "--force", "--create-full-path", source,
                          "/cli/abs-out/deeper/")
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "START refused: 0x80070005: access denied (the path leaves the guest's destination "
        "root or is not writable)")
    receiver.wait_log(r"copy failed: /cli/abs-out/deeper/.*0x80070005: access denied: "
                      r"symlink /cli/abs-out leads outside the destination root", since=mark)


@pytest.mark.parametrize("points_to", ["file", "dangling", "dir"])
async def test_symlink_as_target_never_written_through(
        receiver: ReceiverProcess, source: Path, base: Path, points_to: str) -> None:
    d = receiver.root / f"target-{points_to}"
    d.mkdir()
    link_target = {"file": base / "outside" / "victim.txt",
                   "dangling": base / "outside" / "created-through-link.txt",
                   "dir": base / "outside"}[points_to]
    link = d / "escape.txt"
    os.symlink(link_target, link)
    status = await _copy_status(receiver.url, source, f"/target-{points_to}/", force=False)
    assert status == Status.ALREADY_EXISTS
    assert link.is_symlink()
    # with --force the entry itself is replaced; what it pointed at is untouched
    assert await _copy_status(receiver.url, source, f"/target-{points_to}/") == Status.S_OK
    assert not link.is_symlink()
    assert link.read_bytes() == PAYLOAD
    assert not (base / "outside" / "created-through-link.txt").exists()
