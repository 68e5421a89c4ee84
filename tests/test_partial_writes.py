"""A write the kernel cuts short: RLIMIT_FSIZE makes ``pwritev`` write only up to the
limit, then fail with EFBIG. The sink resumes the short write, then fails the copy with a
status, removes its temp file and commits nothing. Below the limit every byte lands.

A real subprocess (the limit and SIGXFSZ are per process), a real FileSink and file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = r"""
import json, os, resource, signal, sys
from gsi.errors import SinkError
from gsi.sink import FileSink
from gsi.constants import CopyFlags
root, limit, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal's death
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
sink = FileSink(root, fsync=False, check_free_space=False)
copy = sink.begin("/", "f", CopyFlags(0), size)
pieces = [bytes([i % 256]) * 6144 for i in range(size // 6144)]
stage = "writev"
try:
    copy.writev(0, [memoryview(p) for p in pieces])
    stage = "commit"
    copy.commit()
    print(json.dumps({"status": 0}))
except SinkError as exc:
    print(json.dumps({"status": exc.status, "reason": exc.reason, "stage": stage}))
sink.close()
"""


@pytest.mark.parametrize("limit", [100_000, 1 << 20])
def test_a_write_cut_short_fails_the_copy_cleanly(tmp_path: Path, limit: int) -> None:
    size = 64 * 6144  # 393,216 bytes
    root = tmp_path / "root"
    root.mkdir()
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(root), str(limit), str(size)],
                         capture_output=True, text=True, timeout=60, check=True)
    result = json.loads(run.stdout)
    if limit < size:
        # the short write is resumed, and the rest fails in the write itself (EFBIG),
        # not later at the commit's size check
        assert result["status"] != 0 and result["stage"] == "writev", result
        assert "large" in result["reason"].lower() or "EFBIG" in result["reason"], result
        assert "f" not in {p.name for p in root.iterdir()}
        assert list(root.iterdir()) == [], "the temp file must be gone"
    else:
        assert result == {"status": 0}
        expected = b"".join(bytes([i % 256]) * 6144 for i in range(size // 6144))
        assert (root / "f").read_bytes() == expected
