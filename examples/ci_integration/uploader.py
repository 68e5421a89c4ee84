"""The code under test: push a build's artifacts into a Hyper-V VM.

A real project would call this with ``hyperv://<VM id>/<service GUID>`` (on a Windows host)
or ``vsock://CID:PORT``; its tests point it at a gsi receiver instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import trio

from host_sim import CopyResult, open_host


async def push_artifacts(guest_url: str, files: Sequence[str | os.PathLike[str]],
                         dest_dir: str, *, replace: bool = True) -> list[CopyResult]:
    """Copy ``files`` into ``dest_dir`` in the guest over one connection.

    Like one ``Copy-VMFile -CreateFullPath [-Force]`` per file.

    Raises:
        gsi.CopyFailed: the guest refused a file (``.status`` is its HRESULT).
    """
    results = []
    async with open_host(guest_url) as host:
        for path in files:
            results.append(await host.copy_file(path, dest_dir, create_full_path=True,
                                                force=replace))
    return results


def push_artifacts_sync(guest_url: str, files: Sequence[str | os.PathLike[str]],
                        dest_dir: str, *, replace: bool = True) -> list[CopyResult]:
    """:func:`push_artifacts` for synchronous callers."""
    return trio.run(functools.partial(push_artifacts, guest_url, files, dest_dir,
                                      replace=replace))
