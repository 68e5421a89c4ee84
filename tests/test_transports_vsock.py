"""AF_VSOCK: listen where the kernel allows; a copy only through vsock_loopback, CID 1.

SAFETY: on a VM guest, CID 2 (and any other CID) is the hypervisor/host. These tests only
bind/listen, and connect to VMADDR_CID_LOCAL (1) only when ``vsock_loopback`` is loaded.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
import trio

from gsi.transports import (
    VMADDR_CID_ANY,
    VMADDR_CID_LOCAL,
    VMADDR_PORT_ANY,
    TransportError,
    VsockAddress,
    connect,
    listener_url,
    open_listeners,
    parse_url,
)

HAS_AF_VSOCK = hasattr(socket, "AF_VSOCK")
HAS_LOOPBACK = os.path.exists("/sys/module/vsock_loopback")
needs_vsock = pytest.mark.skipif(not HAS_AF_VSOCK, reason="no AF_VSOCK on this platform")


async def _listen_or_skip(url: str) -> list[trio.abc.Listener[trio.abc.HalfCloseableStream]]:
    try:
        return await open_listeners(url)
    except TransportError as exc:
        pytest.skip(f"the kernel refused to listen on {url}: {exc}")


@needs_vsock
async def test_listen_any_cid_any_port() -> None:
    listeners = await _listen_or_skip("vsock://-1:-1")
    try:
        (listener,) = listeners
        address = parse_url(listener_url(listener))
        assert isinstance(address, VsockAddress)
        assert address.cid == VMADDR_CID_ANY
        assert address.port != VMADDR_PORT_ANY  # the kernel's choice is reported
    finally:
        for listener in listeners:
            await listener.aclose()


@needs_vsock
async def test_listen_any_cid_fixed_high_port() -> None:
    port = random.randrange(0x4000_0000, 0x7FFF_FFFF)
    listeners = await _listen_or_skip(f"vsock://-1:{port}")
    try:
        assert [listener_url(listener) for listener in listeners] == [f"vsock://-1:{port}"]
        with pytest.raises(TransportError, match=f"cannot listen on vsock://-1:{port}: "):
            await open_listeners(f"vsock://-1:{port}")
    finally:
        for listener in listeners:
            await listener.aclose()


async def test_connect_to_any_cid_refused_without_a_socket() -> None:
    with pytest.raises(TransportError, match="CID -1 \\(any\\) is only for listening"):
        await connect("vsock://-1:5005")
    with pytest.raises(TransportError, match="port -1 \\(any\\) is only for listening"):
        await connect(f"vsock://{VMADDR_CID_LOCAL}:-1")


async def test_missing_af_vsock_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(socket, "AF_VSOCK", raising=False)
    with pytest.raises(TransportError, match="AF_VSOCK is not available on this platform"):
        await open_listeners("vsock://-1:5005")
    with pytest.raises(TransportError, match="AF_VSOCK is not available on this platform"):
        await connect("vsock://1:5005")


@needs_vsock
@pytest.mark.skipif(
    not HAS_LOOPBACK,
    reason="vsock_loopback kernel module absent; connecting to any other CID would reach "
    "the hypervisor",
)
async def test_loopback_copy() -> None:
    listeners = await _listen_or_skip("vsock://-1:-1")
    try:
        address = parse_url(listener_url(listeners[0]))
        assert isinstance(address, VsockAddress)
        target = VsockAddress(cid=VMADDR_CID_LOCAL, port=address.port)
        assert target.cid == 1  # never any other CID
        with trio.fail_after(10):
            async with (
                await connect(target) as client,
                await listeners[0].accept() as server,
            ):
                payload = os.urandom(100_000)
                await client.send_all(payload)
                await client.send_eof()
                got = bytearray()
                while chunk := await server.receive_some():
                    got += chunk
                assert got == payload
                await server.send_all(b"ok")
                assert await client.receive_some(2) == b"ok"
    finally:
        for listener in listeners:
            await listener.aclose()
