"""``--transport-mode {auto,native,threaded}``: the CLIs pass ``native`` through, and a copy
runs end to end over the thread-backed Hyper-V socket path.

Linux has no AF_HYPERV: as in test_transports_hyperv.py, ``gsi.transports.hyperv`` is made
to create Unix sockets, so everything but the ``socket(AF_HYPERV, ...)`` call is real.
"""

from __future__ import annotations

import logging
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import gsi.cli
import host_sim.cli
import host_sim.client
from gsi.server import Receiver, ReceiverConfig
from gsi.testing import GuestProcess
from gsi.transports import HyperVAddress, hyperv, open_listeners, transport_kind
from gsi.transports import connect as real_connect
from host_sim import copy_vm_file

SVC = "0000138d-facb-11e6-bd58-64006a7986d3"
MODES = [("auto", None), ("native", True), ("threaded", False)]


@pytest.mark.parametrize("fault", [[], ["--fault", "duplicate:at=write:0"]],
                         ids=["clean", "fault"])
@pytest.mark.parametrize(("mode", "native"), MODES)
def test_host_sim_passes_the_mode_to_connect(
    gsi_guest_process: GuestProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    mode: str, native: bool | None, fault: list[str],
) -> None:
    """The clean copy and the fault host (``--fault``) open their connection alike."""
    seen: list[bool | None] = []

    async def spy(url: str, *, native: bool | None = None) -> trio.abc.HalfCloseableStream:
        seen.append(native)
        return await real_connect(url, native=native)

    monkeypatch.setattr(host_sim.client, "connect", spy)
    source = tmp_path / "mode.txt"
    source.write_bytes(mode.encode())
    status = host_sim.cli.main(["copy", "--to", gsi_guest_process.url, "--transport-mode",
                                mode, "--no-progress", *fault, str(source), "/"])
    assert status == 0
    assert seen == [native]
    assert gsi_guest_process.path("/mode.txt").read_bytes() == mode.encode()


def test_host_sim_refuses_an_unknown_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        host_sim.cli.main(["copy", "--to", "unix:///x", "--transport-mode", "fast", "a", "/"])
    assert exited.value.code == 2
    assert "invalid choice: 'fast'" in capsys.readouterr().err


@pytest.mark.parametrize(("mode", "native"), [*MODES, (None, None)])
def test_gsi_receiver_passes_the_mode_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str | None, native: bool | None,
) -> None:
    seen: list[tuple[list[str], bool | None]] = []

    async def fake_run(config: ReceiverConfig, urls: list[str],
                       native: bool | None = None) -> None:
        seen.append((urls, native))

    monkeypatch.setattr(gsi.cli, "run", fake_run)
    url = f"hyperv://wildcard/{SVC}"
    argv = ["--root", str(tmp_path), "--listen", url]
    assert gsi.cli.main(argv + (["--transport-mode", mode] if mode else [])) == 0
    assert seen == [([url], native)]


@pytest.fixture
def unix_as_hyperv(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """hyperv.py creates Unix sockets; (VmId, ServiceId) maps to a path by ServiceId."""
    monkeypatch.setattr(
        hyperv, "hyperv_socket", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    with tempfile.TemporaryDirectory(prefix="gsi-hv-") as tmp:  # short: sun_path limit

        def path_of(address: HyperVAddress) -> str:
            return f"{tmp}/{address.service_id}.sock"

        monkeypatch.setattr(hyperv, "_sockaddr", path_of)
        yield


@pytest.mark.parametrize("native", [False, True, None])
async def test_copy_over_the_hyperv_path(
    unix_as_hyperv: None, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    native: bool | None,
) -> None:
    caplog.set_level(logging.INFO, logger="gsi.transports")
    root = tmp_path / "root"
    root.mkdir()
    data = bytes(range(256)) * 97  # several fragments and a partial one
    source = tmp_path / "payload.bin"
    source.write_bytes(data)
    receiver = Receiver(ReceiverConfig(root=root, fsync=False))
    listeners: list[Any] = await open_listeners(f"hyperv://wildcard/{SVC}", native=native)
    expected = "threaded" if native is False else "native"
    assert transport_kind(listeners[0]) == expected
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(receiver.serve, listeners)
            result = await copy_vm_file(f"hyperv://parent/{SVC}", source, "/in/",
                                        create_full_path=True, window=4, native=native)
            nursery.cancel_scope.cancel()
    assert result.size == len(data)
    assert (root / "in" / "payload.bin").read_bytes() == data
    assert receiver.stats.committed == 1
    choices = [r.getMessage() for r in caplog.records if "using the" in r.getMessage()]
    assert len(choices) == 2  # the guest's listener and the host's stream
    assert all(f"using the {expected}" in choice for choice in choices), choices
