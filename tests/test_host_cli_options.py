"""host-sim copy options for the protocol's unconfirmed corners, and argument order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_helpers import ReceiverProcess, random_bytes, run_host_sim, running_receiver


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReceiverProcess]:
    root = tmp_path_factory.mktemp("opts-root")
    with running_receiver(root, ["tcp://127.0.0.1:0"]) as rx:
        yield rx


def test_options_may_follow_the_files(receiver: ReceiverProcess, tmp_path: Path) -> None:
    src = tmp_path / "late.bin"
    src.write_bytes(random_bytes(7000, seed=1))
    done = run_host_sim(receiver.url, src, "--name", "renamed.bin", "--create-full-path",
                        "/late/")
    assert done.returncode == 0, done.stderr
    assert (receiver.root / "late" / "renamed.bin").read_bytes() == src.read_bytes()


def test_destination_is_file_splits_the_path(receiver: ReceiverProcess,
                                             tmp_path: Path) -> None:
    src = tmp_path / "source-name.bin"
    src.write_bytes(random_bytes(10000, seed=2))
    done = run_host_sim(receiver.url, "--destination-is-file", "--create-full-path", src,
                        "/full/path/target.bin")
    assert done.returncode == 0, done.stderr
    assert (receiver.root / "full" / "path" / "target.bin").read_bytes() == src.read_bytes()
    assert not (receiver.root / "full" / "path" / "target.bin" / "source-name.bin").exists()


@pytest.mark.parametrize("args", [
    ["--destination-is-file", "SRC", "/dir/"],            # no file name at the end
    ["--destination-is-file", "SRC", "SRC", "/dir/f"],    # two sources
    ["--framework-versions", "3", "SRC", "/dir/"],        # not MAJOR.MINOR
    ["--message-versions", "1.x", "SRC", "/dir/"],
])
def test_bad_option_values_are_usage_errors(receiver: ReceiverProcess, tmp_path: Path,
                                            args: list[str]) -> None:
    src = tmp_path / "s.bin"
    src.write_bytes(b"x")
    done = run_host_sim(receiver.url, *[str(src) if a == "SRC" else a for a in args])
    assert done.returncode == 2
    assert "error:" in done.stderr
    assert not list(receiver.root.rglob("s.bin")) and not (receiver.root / "dir").exists()


def test_versions_offered_are_what_the_guest_negotiates_on(receiver: ReceiverProcess,
                                                           tmp_path: Path) -> None:
    src = tmp_path / "v.bin"
    src.write_bytes(b"versions")
    ok = run_host_sim(receiver.url, "--framework-versions", "2.0,3.0",
                      "--message-versions", "1.0,1.1", src, "/")
    assert ok.returncode == 0, ok.stderr
    refused = run_host_sim(receiver.url, "--framework-versions", "1.0,2.0", "--force", src,
                           "/")
    assert refused.returncode == 1
    assert "version negotiation failed: 0x80004005" in refused.stderr
    assert (receiver.root / "v.bin").read_bytes() == b"versions"
