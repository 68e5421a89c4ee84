"""The main job: a real transfer end to end, receiver and host in separate processes.

Starts ``gsi-receiver`` on a Unix socket with a temporary root, copies a generated
file into a nested path with ``--create-full-path`` once stop-and-wait (like the real
host) and once with a window of 32, verifies SHA-256 on the guest side, prints both
throughputs and cleans up. Run: ``python -m host_sim.demo [--size-mib N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RESULT = re.compile(r"\((?P<mbps>[0-9.]+) MB/s\)")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _make_source(path: Path, size: int) -> None:
    with path.open("wb") as f:
        left = size
        while left:
            n = min(left, 1 << 20)
            f.write(os.urandom(n))
            left -= n


def _start_receiver(root: Path, url: str) -> tuple[subprocess.Popen[str], str]:
    receiver = subprocess.Popen(
        [sys.executable, "-m", "gsi.cli", "--root", str(root), "--listen", url,
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    line = receiver.stdout.readline()
    if not line.startswith("listening on "):
        receiver.kill()
        raise SystemExit(f"demo: the receiver did not start (it said {line!r})")
    return receiver, line.removeprefix("listening on ").strip()


def _copy(url: str, source: Path, dest: str, *extra: str) -> float:
    done = subprocess.run(
        [sys.executable, "-m", "host_sim.cli", "copy", "--to", url, "--create-full-path",
         "--no-progress", *extra, str(source), dest],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"demo: host-sim failed ({done.returncode}): {done.stderr.strip()}")
    print("  " + done.stdout.strip())
    match = _RESULT.search(done.stdout)
    return float(match["mbps"]) if match else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=32, help="file size (default 32)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gsi-demo-") as tmp:
        tmpdir = Path(tmp)
        root = tmpdir / "guest-root"
        root.mkdir()
        source = tmpdir / "payload.bin"
        _make_source(source, args.size_mib << 20)
        expected = _sha256(source)
        receiver, url = _start_receiver(root, f"unix://{tmpdir / 'gsi.sock'}")
        print(f"receiver listening on {url}, root {root}")
        try:
            started = time.perf_counter()
            print(f"copying {args.size_mib} MiB, stop-and-wait (window 1, 6144-byte fragments):")
            stop_and_wait = _copy(url, source, "/demo/nested/deeper/")
            print("copying again with --force, window 32:")
            windowed = _copy(url, source, "/demo/nested/deeper/", "--force", "--window", "32")
            target = root / "demo" / "nested" / "deeper" / source.name
            actual = _sha256(target)
            if actual != expected:
                raise SystemExit(f"demo: SHA-256 mismatch: {actual} != {expected}")
            print(f"guest-side SHA-256 verified: {actual}")
            print(f"throughput: stop-and-wait {stop_and_wait:.1f} MB/s, window 32 "
                  f"{windowed:.1f} MB/s ({windowed / stop_and_wait:.1f}x) "
                  f"[{time.perf_counter() - started:.1f} s in all]")
        finally:
            receiver.send_signal(signal.SIGTERM)
            try:
                code = receiver.wait(timeout=30)
            except subprocess.TimeoutExpired:
                receiver.kill()
                code = receiver.wait()
        if code != 0:
            raise SystemExit(f"demo: the receiver exited with status {code}")
    print("cleaned up; demo passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
