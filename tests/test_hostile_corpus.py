"""The hostile-input corpus (tests/hostile/make_corpus.py) replayed against a running
``gsi-receiver`` process, one fresh connection per case.

Each case must get exactly what its table row says: one answer with the expected status
(an echo of the request, then a clean close at end of stream), or a clean close with no
answer. The receiver must survive all of it (no traceback in its log, still serving
afterwards) and write nothing outside its root; as no copy is ever completed, nothing
but directories may appear inside it either.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from fault_helpers import snapshot, temp_files
from hostile.make_corpus import (
    CASES,
    CHECKED_IN,
    CLOSE,
    CLOSE_AT_EOF,
    HERE,
    TID,
    Case,
    copying_prelude,
    main,
    negotiate,
)

from gsi import codec
from gsi.constants import ICMSG_HDR_END, IcMsgType
from gsi.framing import Framer
from gsi.testing import GuestProcess, guest_process
from gsi.transports import connect
from host_sim import copy_vm_file

BY_NAME = {case.name: case for case in CASES}


@pytest.fixture(scope="module")
def corpus_top(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``root`` laid out as make_corpus.ROOT_LAYOUT says, with ``outside`` beside it."""
    top = tmp_path_factory.mktemp("hostile")
    root = top / "root"
    for d in ("root/hostile", "root/adir", "outside/sub"):
        (top / d).mkdir(parents=True)
    (top / "outside" / "secret.txt").write_text("outside the root: never touched\n")
    (root / "exists.txt").write_text("an existing file\n")
    (root / "in").symlink_to("hostile")
    (root / "out").symlink_to("../outside")
    (root / "up").symlink_to("..")
    (root / "rootlink").symlink_to("/")
    (root / "outlink").symlink_to("../outside/secret.txt")
    return top


@pytest.fixture(scope="module")
def before(corpus_top: Path) -> dict[str, tuple[str, str]]:
    return snapshot(corpus_top)


@pytest.fixture(scope="module")
def guest(corpus_top: Path, before: dict[str, tuple[str, str]]) -> Iterator[GuestProcess]:
    """One receiver for the whole corpus; the block fails on a traceback in its log."""
    with guest_process(corpus_top / "root", idle_timeout=10,
                       log_path=corpus_top.parent / "hostile-receiver.log") as g:
        yield g


async def _answer(stream: trio.abc.Stream, framer: Framer) -> bytes | None:
    """The next whole answer, or None once the receiver closed the connection."""
    while (payload := framer.next_message()) is None:
        if framer.at_eof:
            return None
        try:
            data = await stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        framer.feed(data)
    return payload


async def replay(url: str, case: Case, payload: bytes) -> None:
    prelude = {"none": [], "negotiated": [negotiate(1)], "copying": copying_prelude()}
    stream = await connect(url)
    framer = Framer(1 << 20)
    try:
        with trio.fail_after(10):
            for request in prelude[case.prelude]:
                await stream.send_all(request)
                answer = await _answer(stream, framer)
                assert answer is not None and codec.status_of(answer) == 0, case.prelude
            try:
                await stream.send_all(payload)
            except trio.BrokenResourceError:
                assert case.expect == CLOSE, "closed before the payload went out"
            if case.expect == CLOSE_AT_EOF:
                await stream.send_eof()
            answer = await _answer(stream, framer)
            if isinstance(case.expect, str):
                assert answer is None, f"expected a close, got status {codec.status_of(answer):#x}"
                return
            assert answer is not None, "closed instead of answering"
            status = codec.status_of(answer)
            assert status == case.expect, f"status {status:#010x}, expected {case.expect:#010x}"
            assert answer[24] == TID
            assert len(answer) == len(payload)
            if codec.peek(payload)[0] != IcMsgType.NEGOTIATE:  # an echo, byte for byte
                assert answer[:20] == payload[:20]
                assert answer[24] == payload[24] and answer[26:] == payload[26:]
            with trio.move_on_after(0.05):  # nothing more comes before our end of stream
                extra = await stream.receive_some(1)
                assert not extra, "a second answer"
            await stream.send_eof()
            assert await _answer(stream, framer) is None  # then a clean close
    finally:
        await trio.aclose_forcefully(stream)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_case(guest: GuestProcess, case: Case) -> None:
    await replay(guest.url, case, case.payload)


@pytest.mark.parametrize("name", CHECKED_IN)
async def test_checked_in_file(guest: GuestProcess, name: str) -> None:
    await replay(guest.url, BY_NAME[name], (HERE / f"{name}.bin").read_bytes())


def test_checked_in_files_are_current() -> None:
    assert main(["--check"]) == 0


async def test_receiver_survived_and_wrote_nothing(
        guest: GuestProcess, corpus_top: Path, before: dict[str, tuple[str, str]],
        tmp_path: Path) -> None:
    """After the whole corpus (replayed here, so that the test stands alone, under ``-k``
    too): still alive, still serving, nothing escaped."""
    for case in CASES:
        await replay(guest.url, case, case.payload)
    assert guest.process.poll() is None
    assert "Traceback" not in guest.log()
    root = corpus_top / "root"
    with trio.fail_after(10):
        while temp_files(root):  # sessions of the last cases may still be ending
            await trio.sleep(0.01)
    after = snapshot(corpus_top)
    for rel, entry in after.items():
        if rel in before:
            assert entry == before[rel], rel
        else:
            assert rel.startswith("root/") and entry[0] == "dir", (rel, entry)
    assert set(before) <= set(after)
    source = tmp_path / "after.bin"
    source.write_bytes(b"still serving\n" * 1000)
    with trio.fail_after(10):
        await copy_vm_file(guest.url, source, "/hostile", name="after.bin")
    assert (root / "hostile" / "after.bin").read_bytes() == source.read_bytes()


def test_corpus_covers_every_fcopy_field() -> None:
    """The table holds a case for each way section 8 says a request can be wrong."""
    names = set(BY_NAME)
    for needed in ("flags_zero", "msgsize_19", "msgsize_above_max", "negotiate_counts_101",
                   "negotiate_counts_overrun", "negotiate_no_common_version",
                   "fcopy_before_negotiate", "icmsgtype_max", "operation_4",
                   "write_size_above_fragment", "write_beyond_file_size", "write_body_short",
                   "complete_incomplete", "name_without_nul", "name_unpaired_high_surrogate",
                   "name_empty", "name_with_slash", "path_dotdot", "path_symlink_outside",
                   "target_symlink_force", "target_directory", "start_file_size_max"):
        assert needed in names, needed
    assert all(len(c.payload) >= 1 for c in CASES)
    assert ICMSG_HDR_END == 28
