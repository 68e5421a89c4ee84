"""The cases of a benchmark run (``--quick`` and full).

A case is one configuration of the receiver under test and the host driver. Every case
of kind ``copy`` is measured next to three baselines run in the same repetitions
(interleaved: raw copy, per-fragment write, bare loop, then the case): the same file,
the same transport, the same window and fragment size. On ``vmbus-emu`` (an emulated
vmbus channel, stop-and-wait, full echo, as stock ``Copy-VMFile`` runs) only the bare
loop can run: there is no socket to copy raw bytes over.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

MiB = 1 << 20
GiB = 1 << 30
STOCK = 6144


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One measured configuration.

    Attributes:
        transport: ``unix``, ``tcp`` or ``vmbus-emu``.
        kind: ``copy`` (one file), ``conns`` (``connections`` channels at once, each
            copying a ``size`` file), ``files`` (``files`` small files of ``size`` bytes
            on one channel, reported in files/s) or ``rss`` (one big file, memory check).
        echo: ``full``: WRITE answers echo the whole request, as the Linux daemon does
            (the receiver's default, "stock"); ``trim``: ``--trim-write-echo`` (answers of
            80 bytes, which PROTOCOL.md section 2 allows on stream transports).
    """

    kind: str
    transport: str
    size: int
    window: int
    fragment: int = STOCK
    fsync: bool = False
    echo: str = "trim"
    connections: int = 1
    files: int = 1
    reps: int = 3

    @property
    def total_bytes(self) -> int:
        return self.size * self.connections * self.files

    @property
    def writes(self) -> int:
        """WRITE_TO_FILE requests one run of the case sends (all files, all connections)."""
        return writes_per_file(self.size, self.fragment) * self.files * self.connections

    @property
    def baselines(self) -> tuple[str, ...]:
        if self.transport == "vmbus-emu":
            return ("bare",)
        if self.kind == "copy" and self.window == 64 and self.fragment == STOCK:
            return ("raw", "pwrite", "sink", "bare")
        if self.kind == "copy":
            return ("raw", "pwrite", "bare")
        if self.kind == "conns":
            return ("raw", "bare")
        if self.kind == "files":
            return ("bare",)
        return ()

    @property
    def label(self) -> str:
        parts = [self.kind, self.transport, _size(self.size)]
        if self.kind == "files":
            parts.append(f"x{self.files}")
        if self.kind == "conns":
            parts.append(f"{self.connections}conn")
        parts += [f"w{self.window}", f"f{_size(self.fragment)}",
                  "fsync" if self.fsync else "nofsync", f"echo-{self.echo}"]
        return " ".join(parts)


def writes_per_file(size: int, fragment: int) -> int:
    """WRITEs that copy one file of ``size`` bytes in ``fragment``-byte pieces, as
    ``host_sim`` sends them: ceil(size / fragment) (none for an empty file)."""
    return -(-size // fragment)


VMBUS = Case(kind="copy", transport="vmbus-emu", size=32 * MiB, window=1, echo="full")
"""Stop-and-wait over the emulated vmbus ring, the channel stock Copy-VMFile uses."""


def _size(n: int) -> str:
    for unit, scale in (("G", GiB), ("M", MiB), ("K", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def quick() -> list[Case]:
    cases = [
        Case(kind="copy", transport="unix", size=64 * MiB, window=1, echo="full", reps=2),
        Case(kind="copy", transport="unix", size=64 * MiB, window=64, echo="full"),
        Case(kind="copy", transport="tcp", size=64 * MiB, window=1, echo="full", reps=2),
        Case(kind="copy", transport="tcp", size=64 * MiB, window=64, echo="full"),
        Case(**{**asdict(VMBUS), "reps": 2}),
    ]
    for window, fragment in ((64, STOCK), (8, 64 * 1024), (8, MiB)):
        cases.append(Case(kind="copy", transport="unix", size=64 * MiB, window=window,
                          fragment=fragment))
    for window, fragment in ((64, STOCK), (8, MiB)):
        cases.append(Case(kind="copy", transport="tcp", size=64 * MiB, window=window,
                          fragment=fragment))
    cases.append(Case(kind="copy", transport="unix", size=64 * MiB, window=8, fragment=MiB,
                      fsync=True))
    for n in (1, 8, 64):
        cases.append(Case(kind="conns", transport="unix", size=32 * MiB // n, window=64,
                          connections=n))
    for window in (1, 64):
        cases.append(Case(kind="files", transport="unix", size=4096, window=window,
                          files=500, reps=2))
    return cases


def full() -> list[Case]:
    cases: list[Case] = []
    for transport in ("unix", "tcp"):
        for window in (1, 8, 64):
            cases.append(Case(kind="copy", transport=transport, size=64 * MiB, window=window,
                              echo="full"))
            for fragment in (STOCK, 64 * 1024, MiB):
                cases.append(Case(kind="copy", transport=transport, size=64 * MiB,
                                  window=window, fragment=fragment))
        for window, fragment in ((1, MiB), (8, MiB), (8, 64 * 1024), (64, STOCK)):
            cases.append(Case(kind="copy", transport=transport, size=GiB, window=window,
                              fragment=fragment, reps=2))
    cases.append(Case(kind="copy", transport="unix", size=GiB, window=64, echo="full",
                      reps=2))
    cases.append(Case(**{**asdict(VMBUS), "size": 64 * MiB}))
    for size, reps in ((64 * MiB, 3), (GiB, 2)):
        for window, fragment in ((64, STOCK), (8, MiB)):
            cases.append(Case(kind="copy", transport="unix", size=size, window=window,
                              fragment=fragment, fsync=True, reps=reps))
    for transport in ("unix", "tcp"):
        for window in (1, 64):
            for n in (1, 8, 64):
                cases.append(Case(kind="conns", transport=transport, size=64 * MiB // n,
                                  window=window, connections=n))
    for transport, window in (("unix", 1), ("unix", 64), ("tcp", 1)):
        cases.append(Case(kind="files", transport=transport, size=4096, window=window,
                          files=10_000, reps=2))
    for window, fragment in ((1, MiB), (64, STOCK), (255, MiB)):
        cases.append(Case(kind="rss", transport="unix", size=4 * GiB, window=window,
                          fragment=fragment, echo="full", reps=1))
    return cases
