"""host-sim copy --recursive / host_sim.copy_tree: whole trees over one connection, into a
real receiver; empty directories, symlinks and non-regular files reported and skipped."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from e2e_helpers import REPO, _child_env

from gsi.testing import guest_process, open_guest
from host_sim import TreeError, copy_tree, plan_tree

NON_BMP = "\U0001d518\U0001d52b\U0001d526 \U0001f600"
"""Characters outside the BMP: surrogate pairs in UTF-16."""


def _tree(base: Path) -> Path:
    """A source tree: nested, empty and Unicode-named directories, symlinks, a fifo."""
    top = base / "top"
    (top / "nested" / "deeper").mkdir(parents=True)
    (top / "empty").mkdir()
    (top / "empty2" / "inner_empty").mkdir(parents=True)
    (top / "\u00fcn\u00ef \u65e5\u672c").mkdir()
    (top / NON_BMP).mkdir()
    (top / "a.txt").write_text("alpha")
    (top / "nested" / "deeper" / "b.bin").write_bytes(random.Random(1).randbytes(20000))
    (top / "nested" / "zero.bin").write_bytes(b"")
    (top / "\u00fcn\u00ef \u65e5\u672c" / "c.txt").write_text("gamma")
    (top / NON_BMP / f"{NON_BMP}.txt").write_text("delta")
    os.symlink("a.txt", top / "link_to_file")
    os.symlink("nested", top / "link_to_dir")
    os.symlink("..", top / "nested" / "loop")
    os.mkfifo(top / "fifo")
    return top


REGULAR = ["a.txt", "nested/deeper/b.bin", "nested/zero.bin",
           "\u00fcn\u00ef \u65e5\u672c/c.txt", f"{NON_BMP}/{NON_BMP}.txt"]


def _files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*")
            if p.is_file() and not p.is_symlink()}


async def test_copy_tree_skips_symlinks(tmp_path: Path) -> None:
    top = _tree(tmp_path / "src")
    progress: list[tuple[int, int]] = []
    with trio.fail_after(30):
        async with open_guest(tmp_path / "root") as guest:
            plan, result = await copy_tree(guest.url, [top], "/dest",
                                           progress=lambda f, b: progress.append((f, b)))
            landed = guest.path("/dest/top")
            assert _files(landed) == {rel: (top / rel).read_bytes() for rel in REGULAR}
            assert not (landed / "empty").exists() and not (landed / "link_to_file").exists()
            assert guest.stats.connections == 1
    total = sum(len((top / rel).read_bytes()) for rel in REGULAR)
    assert (result.files, result.bytes) == (len(REGULAR), total)
    assert (result.empty_dirs, result.symlinks, result.special) == (3, 3, 1)
    assert set(plan.empty_dirs) == {"/dest/top/empty", "/dest/top/empty2",
                                    "/dest/top/empty2/inner_empty"}
    assert all("use --follow-symlinks" in s for s in plan.symlinks)
    assert plan.special == [f"{top / 'fifo'} (fifo)"]
    assert progress[-1] == (len(REGULAR), total)
    assert progress == sorted(progress)
    assert "5 files, 20015 bytes copied" in str(result)
    assert "skipped: 3 empty directories, 3 symlinks, 1 other non-regular files" in str(result)


async def test_copy_tree_follows_symlinks_without_looping(tmp_path: Path) -> None:
    top = _tree(tmp_path / "src")
    async with open_guest(tmp_path / "root") as guest:
        plan, result = await copy_tree(guest.url, [top], "/", follow_symlinks=True)
        landed = guest.path("/top")
        assert (landed / "link_to_file").read_text() == "alpha"
        assert (landed / "link_to_dir" / "deeper" / "b.bin").read_bytes() == (
            top / "nested" / "deeper" / "b.bin").read_bytes()
        assert not (landed / "nested" / "loop").exists()
    assert result.files == len(REGULAR) + 3  # link_to_file, link_to_dir/{deeper/b.bin,zero}
    assert plan.symlinks == [f"{top / 'link_to_dir' / 'loop'} (a loop: it leads to a "
                             "directory on its own path)",
                             f"{top / 'nested' / 'loop'} (a loop: it leads to a directory "
                             "on its own path)"]


async def test_names_too_long_are_refused_before_sending(tmp_path: Path) -> None:
    deep = tmp_path / "src" / "top" / ("d" * 130) / ("e" * 130)
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("x")
    (tmp_path / "src" / "top" / "ok.txt").write_text("y")
    async with open_guest(tmp_path / "root") as guest:
        with pytest.raises(TreeError, match=r"guest directory .* at most 259 fit"):
            await copy_tree(guest.url, [tmp_path / "src" / "top"], "/dest/")
        assert guest.stats.connections == 0
        assert list(guest.root.iterdir()) == []


def test_plan_refusals(tmp_path: Path) -> None:
    (tmp_path / "x" / "same").mkdir(parents=True)
    (tmp_path / "y" / "same").mkdir(parents=True)
    (tmp_path / "x" / "same" / "f").write_text("1")
    (tmp_path / "y" / "same" / "f").write_text("2")
    with pytest.raises(TreeError, match="would both be /d/same/f"):
        plan_tree([tmp_path / "x" / "same", tmp_path / "y" / "same"], "/d")
    with pytest.raises(TreeError, match="No such file"):
        plan_tree([tmp_path / "missing"], "/d")
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(os.path.join(os.fsencode(bad), b"\xff.txt"), "wb") as f:
        f.write(b"z")
    with pytest.raises(TreeError, match="lone surrogate"):
        plan_tree([bad], "/d")
    single = tmp_path / "single.txt"
    single.write_text("s")
    plan = plan_tree([single], "/d")
    assert [(f.path_name, f.file_name) for f in plan.files] == [("/d", "single.txt")]


def _host_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "host_sim.cli", *args], capture_output=True,
                          text=True, cwd=REPO, env=_child_env(), timeout=60, check=False)


def test_cli_recursive_copy(tmp_path: Path) -> None:
    top = _tree(tmp_path / "src")
    with guest_process(tmp_path / "root") as guest:
        result = _host_sim("copy", "--recursive", "--to", guest.url, str(top), "/in")
        assert result.returncode == 0, result.stdout + result.stderr
        assert _files(guest.path("/in/top")) == {rel: (top / rel).read_bytes()
                                                 for rel in REGULAR}
        followed = _host_sim("copy", "-r", "--follow-symlinks", "--force", "--to", guest.url,
                             str(top), "/in")
        assert followed.returncode == 0, followed.stdout + followed.stderr
        assert guest.path("/in/top/link_to_file").read_text() == "alpha"
    lines = result.stdout.splitlines()
    assert "skipped empty directory (the protocol cannot create one): /in/top/empty" in lines
    assert f"skipped symlink: {top / 'link_to_file'} (use --follow-symlinks)" in lines
    assert f"skipped non-regular file: {top / 'fifo'} (fifo)" in lines
    assert lines[-1].startswith("5 files, 20015 bytes copied in ")
    assert lines[-1].endswith("skipped: 3 empty directories, 3 symlinks, "
                              "1 other non-regular files")
    assert "8 files" in followed.stdout.splitlines()[-1]


def test_cli_recursive_usage_errors(tmp_path: Path) -> None:
    top = _tree(tmp_path / "src")
    alone = _host_sim("copy", "--follow-symlinks", "--to", "unix:///x", str(top), "/in")
    assert alone.returncode == 2 and "--follow-symlinks needs --recursive" in alone.stderr
    named = _host_sim("copy", "-r", "--name", "n", "--to", "unix:///x", str(top), "/in")
    assert named.returncode == 2 and "does not combine" in named.stderr
    deep = top / ("d" * 130) / ("e" * 130)
    deep.mkdir(parents=True)
    (deep / "f").write_text("x")
    refused = _host_sim("copy", "-r", "--to", "unix:///nobody-listens", str(top), "/in")
    assert refused.returncode == 2
    assert "cannot send these names, nothing was copied" in refused.stderr
